; modes.asm - the debugger's test guest (tests/test_debug_*.py): a flat image at 0x8000 entered in
; real mode that goes real -> protected -> long mode and passes every kind of stop on the way.
; Key instructions sit at fixed addresses (the AT macro pads with nops that run harmlessly) so
; tests can name them:
;   0x8000 start          0x8030 call sub16 (nexti)    0x8033 after the call
;   0x8040 write/read of physical 0x600 (watchpoints)  0x8060 int 0x50, int3, ud2 (catches)
;   0x8080 lgdt + mov cr0 (PE)                        0x8100 first 32-bit instruction
;   0x8200 first 64-bit instruction                   0x8240 a counting loop (conditions)
;   0x8280 cli; hlt (the end)
; COM1 gets "R", "P", "L" as each mode is reached; the VGA text screen gets "OK" at 0xB8000.

%macro AT 1
    times (%1 - 0x8000) - ($ - $$) nop
%endmacro

%define COUNTER 0x0700          ; the loop's counter (dword), physical = linear
%define WATCHED 0x0600          ; the watched byte
%define PT_BASE 0x1000          ; PML4, PDPT, PD (one 2 MiB page)

    org 0x8000
bits 16
start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov word [0x50 * 4], int50          ; IVT 0x50: an iret
    mov word [0x50 * 4 + 2], 0
    mov word [3 * 4], int50             ; int3 returns too
    mov word [3 * 4 + 2], 0
    mov word [6 * 4], ud_skip           ; #UD: skip the 2-byte ud2
    mov word [6 * 4 + 2], 0
    AT 0x8030
    call sub16                          ; 3 bytes: nexti lands on 0x8033
    mov ax, 0x1234                      ; 0x8033
    AT 0x8040
    mov byte [WATCHED], 0x11            ; write (watch 0x600)
    mov al, [WATCHED]                   ; read (rwatch 0x600)
    mov dx, 0x3F8
    mov al, 'R'
    out dx, al
    AT 0x8060
    int 0x50                            ; software interrupt (catch interrupt)
    int3                                ; software exception 3
    ud2                                 ; #UD (catch exception 6)
    nop
    AT 0x8080
    lgdt [gdtr]
    mov eax, cr0
    or eax, 1
    mov cr0, eax                        ; CR0 write; mode real -> protected16
    jmp dword 0x08:pm32                 ; protected16 -> protected32

sub16:
    mov bx, 7
    ret

int50:
    iret

ud_skip:
    push bp
    mov bp, sp
    add word [bp + 2], 2
    pop bp
    iret

bits 32
    AT 0x8100
pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000
    mov dx, 0x3F8
    mov al, 'P'
    out dx, al
    mov dword [0xB8000], 0x074B074F     ; "OK" in light grey on black
    mov edi, PT_BASE
    xor eax, eax
    mov ecx, 0x3000 / 4
    rep stosd
    mov dword [PT_BASE], PT_BASE + 0x1003
    mov dword [PT_BASE + 0x1000], PT_BASE + 0x2003
    mov dword [PT_BASE + 0x2000], 0x83
    mov eax, PT_BASE
    mov cr3, eax                        ; CR3 write
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax                        ; CR4 write (PAE)
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    wrmsr                               ; EFER write (LME)
    mov eax, cr0
    and eax, ~(3 << 29)
    or eax, 1 << 31
    mov cr0, eax                        ; paging on; protected32 -> compat
    jmp 0x18:lm64                       ; compat -> long64

bits 64
    AT 0x8200
lm64:
    mov rsp, 0x7000
    mov dx, 0x3F8
    mov al, 'L'
    out dx, al
    mov dword [COUNTER], 0
    AT 0x8240
count:
    inc dword [COUNTER]                 ; break 0x8240 if dword [0x700] == 5
    cmp dword [COUNTER], 10
    jne count
    AT 0x8280
    cli
    hlt

align 8
gdt:
    dq 0
    dq 0x00CF9B000000FFFF               ; 0x08 code32
    dq 0x00CF93000000FFFF               ; 0x10 data
    dq 0x00AF9B000000FFFF               ; 0x18 code64
gdtr:
    dw 31
    dd gdt
