; demo.asm - the bundled default guest of `emu run`: a 64 KiB firmware image that walks an x86
; CPU from its reset state through real mode, 32-bit protected mode and 64-bit long mode,
; reporting each step on COM1, and then halts for good (exit status 0).
;
; Build: scripts/build-roms (nasm -f bin). tests/test_roms.py checks roms/demo.bin is what this
; source builds.
;
; The image is mapped so it ends at 4 GiB and its last 128 KiB also appear at 0xE0000-0xFFFFF, as
; on a PC. The CPU starts at F000:FFF0 (CS base 0xFFFF0000); the jump there reloads CS with a
; real-mode segment, so everything below runs from the low copy at 0xF0000. Offsets in this
; file are offsets into segment F000 (org 0); 32-bit code, which uses flat segments, adds
; ROM_BASE, and 64-bit code is RIP-relative.
;
; RAM used (all below 1 MiB): 0x1000-0x3FFF page tables, 0x5000 scratch for cpuid strings,
; stack below 0x7000. The ROM itself is read-only, which is why nothing here writes to it.

%define ROM_SEG     0xF000
%define ROM_BASE    0xF0000         ; linear address of offset 0 in this file

%define COM1        0x3F8
%define COM1_THR    COM1 + 0        ; transmit holding register (DLAB=0)
%define COM1_DLL    COM1 + 0        ; divisor latch low (DLAB=1)
%define COM1_IER    COM1 + 1        ; interrupt enable (DLAB=0)
%define COM1_DLM    COM1 + 1        ; divisor latch high (DLAB=1)
%define COM1_FCR    COM1 + 2
%define COM1_LCR    COM1 + 3
%define COM1_MCR    COM1 + 4
%define COM1_LSR    COM1 + 5
%define LSR_THRE    0x20

%define STACK_TOP   0x7000
%define PML4        0x1000
%define PDPT        0x2000
%define PD          0x3000
%define SCRATCH     0x5000

%define CR0_PE      0x00000001
%define CR0_NW      0x20000000
%define CR0_CD      0x40000000
%define CR0_PG      0x80000000
%define CR4_PAE     0x00000020
%define MSR_EFER    0xC0000080
%define EFER_LME    0x00000100

%define SEL_CODE32  0x08
%define SEL_DATA    0x10
%define SEL_CODE64  0x18

    org 0
    bits 16

; ---------------------------------------------------------------------------------------------
; Real mode (entered from the reset vector at the end of the image).
start:
    cli                             ; no IVT or interrupt controller set up: keep IF clear
    cld                             ; string instructions count upwards
    mov ax, cs
    mov ds, ax                      ; real-mode data (our strings) lives in this segment
    xor ax, ax
    mov ss, ax
    mov sp, STACK_TOP

    ; Fast A20 gate (port 0x92 bit 1): without it, bit 20 of every address is forced to 0.
    ; Bit 0 would reset the machine, so it must be written as 0.
    in al, 0x92
    or al, 0x02
    and al, 0xFE
    out 0x92, al

    call serial_init
    mov si, msg_real
    call puts16

    ; Protected mode: load the GDT (its 32-bit linear base, hence o32), set CR0.PE, and far-jump
    ; so CS is loaded from the GDT. The reset state has caches disabled (CD, NW): turning them
    ; on is the firmware's job.
    o32 lgdt [gdtr]
    mov eax, cr0
    and eax, ~(CR0_CD | CR0_NW)
    or eax, CR0_PE
    mov cr0, eax
    jmp dword SEL_CODE32:(ROM_BASE + pm32)

; ---------------------------------------------------------------------------------------------
; 32-bit protected mode, flat 4 GiB segments.
    bits 32
pm32:
    mov ax, SEL_DATA
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov esp, STACK_TOP
    mov esi, ROM_BASE + msg_pm
    call puts32

    ; Identity-map the first GiB for long mode: PML4[0] -> PDPT, PDPT[0] -> PD, and 512 PD
    ; entries of 2 MiB pages (PS=1), so no 4 KiB page tables are needed. Tables must be zeroed
    ; first: RAM content is undefined and stray present bits would map garbage.
    mov edi, PML4
    xor eax, eax
    mov ecx, 3 * 4096 / 4
    rep stosd
    mov dword [PML4], PDPT | 0x03   ; present | writable
    mov dword [PDPT], PD | 0x03
    mov edi, PD
    mov eax, 0x83                   ; present | writable | PS (2 MiB page), physical 0
    mov ecx, 512
.map:
    mov [edi], eax                  ; high dword stays 0: everything is below 4 GiB
    add eax, 0x200000
    add edi, 8
    loop .map

    ; Long mode needs PAE paging, EFER.LME, then CR0.PG, which activates it (EFER.LMA); we are
    ; then in compatibility mode until a far jump loads a 64-bit (L=1) code segment.
    mov eax, cr4
    or eax, CR4_PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_LME
    wrmsr
    mov eax, cr0
    or eax, CR0_PG
    mov cr0, eax
    jmp SEL_CODE64:(ROM_BASE + lm64)

; ---------------------------------------------------------------------------------------------
; 64-bit long mode.
    bits 64
lm64:
    mov ax, SEL_DATA                ; ignored for addressing in 64-bit mode, but keep them valid
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ss, ax
    mov rsp, STACK_TOP
    lea rsi, [rel msg_long]
    call puts64

    ; Summary: the CPU vendor (cpuid leaf 0: EBX, EDX, ECX) and, when the CPU has one, its brand
    ; string (leaves 0x80000002-4). Both are assembled in RAM because the ROM is read-only.
    lea rsi, [rel msg_vendor]
    call puts64
    xor eax, eax
    cpuid
    mov edi, SCRATCH
    mov [rdi], ebx
    mov [rdi + 4], edx
    mov [rdi + 8], ecx
    mov byte [rdi + 12], 0
    mov rsi, rdi
    call puts64

    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000004             ; highest extended leaf: is there a brand string?
    jb .no_brand
    mov edi, SCRATCH
    mov r8d, 0x80000002
.brand_leaf:
    mov eax, r8d
    cpuid
    stosd                           ; EAX, EBX, ECX, EDX are the next 16 characters
    mov eax, ebx
    stosd
    mov eax, ecx
    stosd
    mov eax, edx
    stosd
    inc r8d
    cmp r8d, 0x80000004
    jbe .brand_leaf
    mov byte [rdi], 0               ; 48 characters need not include a NUL
    mov esi, SCRATCH
.skip_blank:                        ; Intel right-aligns the brand string with spaces
    cmp byte [rsi], ' '
    jne .print_brand
    inc rsi
    jmp .skip_blank
.print_brand:
    cmp byte [rsi], 0
    je .no_brand
    push rsi
    lea rsi, [rel msg_sep]
    call puts64
    pop rsi
    call puts64
.no_brand:
    lea rsi, [rel msg_done]
    call puts64

    ; Halt for good: with interrupts masked nothing can wake the CPU, which the machine reports
    ; as a clean exit (status 0). The jmp only matters if an NMI wakes it anyway.
.halt:
    cli
    hlt
    jmp .halt

; ---------------------------------------------------------------------------------------------
; COM1 output.

    bits 16
; 115200 baud (divisor 1), 8 data bits, no parity, 1 stop bit, FIFOs on, no interrupts (we poll).
serial_init:
    mov dx, COM1_IER
    mov al, 0x00
    out dx, al
    mov dx, COM1_LCR
    mov al, 0x80                    ; DLAB=1: +0/+1 become the divisor latch
    out dx, al
    mov dx, COM1_DLL
    mov al, 0x01
    out dx, al
    mov dx, COM1_DLM
    mov al, 0x00
    out dx, al
    mov dx, COM1_LCR
    mov al, 0x03                    ; 8N1, DLAB=0 again
    out dx, al
    mov dx, COM1_FCR
    mov al, 0xC7                    ; enable and clear both FIFOs, 14-byte trigger level
    out dx, al
    mov dx, COM1_MCR
    mov al, 0x03                    ; DTR | RTS
    out dx, al
    ret

; PUTS: expands putsN for the current mode (N = __BITS__): print the NUL-terminated string at
; DS:SI (ESI, RSI) on COM1, waiting for THRE before each byte so no byte is dropped on a real
; UART. Preserves all registers but flags.
%macro PUTS 0
  %if __BITS__ == 64
    %define %%ax rax
    %define %%dx rdx
    %define %%si rsi
  %else
    %define %%ax eax
    %define %%dx edx
    %define %%si esi
  %endif
puts%[__BITS__]:
    push %%ax
    push %%dx
    push %%si
%%next:
    lodsb
    test al, al
    jz %%done
    mov ah, al                      ; AL is needed for polling
    mov dx, COM1_LSR
%%wait:
    in al, dx
    test al, LSR_THRE
    jz %%wait
    mov al, ah
    mov dx, COM1_THR
    out dx, al
    jmp %%next
%%done:
    pop %%si
    pop %%dx
    pop %%ax
    ret
%endmacro

    bits 16
    PUTS
    bits 32
    PUTS
    bits 64
    PUTS

; ---------------------------------------------------------------------------------------------
; Data (read-only).

msg_real:   db "emu demo guest: hello from real mode", 13, 10, 0
msg_pm:     db "emu demo guest: 32-bit protected mode", 13, 10, 0
msg_long:   db "emu demo guest: 64-bit long mode (first GiB identity-mapped, 2 MiB pages)", 13, 10, 0
msg_vendor: db "emu demo guest: cpu ", 0
msg_sep:    db ", ", 0
msg_done:   db 13, 10, "emu demo guest: done, halting", 13, 10, 0

; Accessed bits are preset (type 0x9B/0x93): loading a selector would otherwise make the CPU
; write the bit into the descriptor, and this table is in ROM.
    align 8
gdt:
    dq 0                            ; 0x00: null descriptor
    dq 0x00CF9B000000FFFF           ; 0x08: 32-bit code, base 0, limit 4 GiB
    dq 0x00CF93000000FFFF           ; 0x10: data, base 0, limit 4 GiB
    dq 0x00AF9B000000FFFF           ; 0x18: 64-bit code (L=1)
gdt_end:
gdtr:
    dw gdt_end - gdt - 1
    dd ROM_BASE + gdt

; ---------------------------------------------------------------------------------------------
; Reset vector: the CPU's first instruction is at offset 0xFFF0 of the last 64 KiB below 4 GiB.
    bits 16
    times 0xFFF0 - ($ - $$) db 0xFF
reset_vector:
    jmp ROM_SEG:start               ; far jump: CS becomes a plain real-mode segment (base 0xF0000)
    times 0x10000 - ($ - $$) db 0xFF
