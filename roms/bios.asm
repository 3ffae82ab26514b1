; bios.asm - emu's PC BIOS: a 64 KiB real-mode ROM whose service handlers trap to Python.
;
; Build: scripts/build-roms (nasm -f bin). tests/test_roms.py checks roms/bios.bin is what this
; source builds; tests/test_bios*.py boot MBR guests through it on every backend.
;
; The image ends at 4 GiB and its last 128 KiB also appear at 0xE0000-0xFFFFF; everything here
; runs from the low copy in segment F000 (org 0). POST sets up the IVT, the interrupt controller
; and the timer, asks Python to fill the BIOS data area, then int 19h boots from disk.
;
; Services (int 10h, 11h, 12h, 13h, 15h, 16h, 1Ah) are stubs: each saves the caller's registers
; in the register block (REGS_SEG:0, emu/layout.py BIOS_REGS), writes its vector number to the
; BIOS call port and reloads the registers, which Python may have changed. Python also edits the
; FLAGS word of the caller's iret frame (at the saved SS:SP + 4) to return CF and ZF. When Python
; asks for a retry (waiting for a key or for time to pass) the stub opens an interrupt window and
; calls again, so the timer keeps ticking while a service waits.
;
; The stubs run with interrupts disabled (as `int` leaves them), so calls never nest, except
; through an interrupt handler that calls a BIOS service from the retry window (not supported).

%define ROM_SEG         0xF000
%define PORT_BIOS_CALL  0x0500      ; emu/layout.py PORT_BIOS_CALL
%define REGS_SEG        0xEFF0      ; emu/layout.py BIOS_REGS (0xEFF00) as a real-mode segment
%define BOOT_SP         0x7C00      ; emu/layout.py BIOS_BOOT_SP
%define BOOT_ADDR       0x7C00      ; emu/layout.py BOOT_SECTOR

; Register block layout (emu/firmware/bios/regs.py).
%define R_EAX       0x00
%define R_EBX       0x04
%define R_ECX       0x08
%define R_EDX       0x0C
%define R_ESI       0x10
%define R_EDI       0x14
%define R_EBP       0x18
%define R_DS        0x1C
%define R_ES        0x1E
%define R_SS        0x20
%define R_SP        0x22
%define R_SERVICE   0x24
%define R_RETRY     0x25

; Services that are not interrupt vectors (no caller frame).
%define SVC_POST    0x00

; BDA fields the ROM itself touches.
%define BDA_TICKS   0x46C
%define BDA_MIDNIGHT 0x470
%define TICKS_PER_DAY 0x1800B0

%define CR0_NW      0x20000000
%define CR0_CD      0x40000000

    org 0
    bits 16

; ---------------------------------------------------------------------------------------------
; Power-on self test (entered from the reset vector).
post:
    cli
    cld
    ; Caches on, as firmware leaves them (the reset state has CD and NW set).
    mov eax, cr0
    and eax, ~(CR0_CD | CR0_NW)
    mov cr0, eax
    xor ax, ax
    mov ss, ax
    mov sp, BOOT_SP

    ; IVT: every vector to a bare iret, then the table below.
    mov es, ax
    xor di, di
    mov cx, 256
.default_vector:
    mov ax, default_handler
    stosw
    mov ax, ROM_SEG
    stosw
    loop .default_vector
    push cs
    pop ds
    mov si, vector_table
.table_entry:
    lodsw                           ; vector number (0xFFFF ends the table)
    cmp ax, 0xFFFF
    je .ivt_done
    shl ax, 2
    mov di, ax
    movsw                           ; offset
    movsw                           ; segment
    jmp .table_entry
.ivt_done:

    ; 8259A pair: edge-triggered, cascaded, 8086 mode; IRQ 0-7 at vectors 08h-0Fh, IRQ 8-15 at
    ; 70h-77h. Only the timer and the cascade line are unmasked.
    mov al, 0x11                    ; ICW1: ICW4 follows, cascade mode
    out 0x20, al
    out 0xA0, al
    mov al, 0x08                    ; ICW2: vector base
    out 0x21, al
    mov al, 0x70
    out 0xA1, al
    mov al, 0x04                    ; ICW3: master has a slave on IRQ 2
    out 0x21, al
    mov al, 0x02                    ; ICW3: slave identity 2
    out 0xA1, al
    mov al, 0x01                    ; ICW4: 8086 mode, normal EOI
    out 0x21, al
    out 0xA1, al
    mov al, 0xFA                    ; OCW1: IRQ 0 and 2 unmasked
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al

    ; 8254 channel 0: mode 2 (rate generator), divisor 65536 -> 18.2 Hz on IRQ 0.
    mov al, 0x34                    ; channel 0, lobyte/hibyte, mode 2, binary
    out 0x43, al
    xor al, al
    out 0x40, al
    out 0x40, al

    ; Python fills the BIOS data area, the EBDA and the screen.
    push word REGS_SEG
    pop ds
    mov byte [R_SERVICE], SVC_POST
    mov dx, PORT_BIOS_CALL
    mov al, SVC_POST
    out dx, al

    int 0x19

; ---------------------------------------------------------------------------------------------
; int 19h: bootstrap loader. Python reads sector 0 of the first bootable drive to 0000:7C00;
; status 0 in AL means it did and DL holds the drive. The boot sector is entered with the
; registers SeaBIOS leaves: AX = AA55h, DL = drive, the others 0, interrupts enabled.
int19:
    cli
    cld
    xor ax, ax
    mov ss, ax
    mov sp, BOOT_SP
    push word REGS_SEG
    pop ds
    mov byte [R_SERVICE], 0x19
    mov dx, PORT_BIOS_CALL
    mov al, 0x19
    out dx, al
    cmp byte [R_EAX], 0
    jne .no_boot
    mov dl, [R_EDX]
    xor eax, eax
    mov ebx, eax
    mov ecx, eax
    mov esi, eax
    mov edi, eax
    mov ebp, eax
    movzx edx, dl
    mov ds, ax
    mov es, ax
    mov fs, ax
    mov gs, ax
    mov ax, 0xAA55
    sti
    jmp 0x0000:BOOT_ADDR
.no_boot:
    int 0x18

; int 18h: no bootable device. Python prints the message; then halt for good.
int18:
    cli
    push word REGS_SEG
    pop ds
    mov byte [R_SERVICE], 0x18
    mov dx, PORT_BIOS_CALL
    mov al, 0x18
    out dx, al
.halt:
    cli
    hlt
    jmp .halt

; ---------------------------------------------------------------------------------------------
; Service stubs.

%macro SERVICE 1
service_%1:
    push ds
    push word REGS_SEG
    pop ds
    mov [R_EAX], eax
    mov al, 0x%1
    jmp service_common
%endmacro

    SERVICE 10
    SERVICE 11
    SERVICE 12
    SERVICE 13
    SERVICE 15
    SERVICE 16
    SERVICE 1A

; Entered with DS = REGS_SEG, the caller's DS on the stack above its iret frame, AL = service.
service_common:
    mov [R_SERVICE], al
    mov [R_EBX], ebx
    mov [R_ECX], ecx
    mov [R_EDX], edx
    mov [R_ESI], esi
    mov [R_EDI], edi
    mov [R_EBP], ebp
    mov [R_ES], es
    pop word [R_DS]
    mov [R_SS], ss
    mov [R_SP], sp                  ; SS:SP now points at the iret frame: IP, CS, FLAGS
    mov byte [R_RETRY], 0           ; Python sets it to be called again, and sees it then
.call:
    mov dx, PORT_BIOS_CALL
    mov al, [R_SERVICE]
    out dx, al
    cmp byte [R_RETRY], 0
    je .done
    sti                             ; interrupt window: a pending timer tick is taken here
    nop
    cli
    jmp .call
.done:
    mov eax, [R_EAX]
    mov ebx, [R_EBX]
    mov ecx, [R_ECX]
    mov edx, [R_EDX]
    mov esi, [R_ESI]
    mov edi, [R_EDI]
    mov ebp, [R_EBP]
    mov es, [R_ES]
    mov ds, [R_DS]
    iret

; ---------------------------------------------------------------------------------------------
; Hardware interrupts.

; IRQ 0, int 08h: the BIOS tick count at 0040:006C, which wraps at midnight (setting the
; rollover flag), then the user hook int 1Ch, then end of interrupt.
irq0:
    push ds
    push ax
    xor ax, ax
    mov ds, ax
    inc dword [BDA_TICKS]
    cmp dword [BDA_TICKS], TICKS_PER_DAY
    jb .hook
    mov dword [BDA_TICKS], 0
    mov byte [BDA_MIDNIGHT], 1
.hook:
    int 0x1C
    mov al, 0x20                    ; non-specific EOI
    out 0x20, al
    pop ax
    pop ds
    iret

; IRQ 8, int 70h: the RTC keeps its line raised until register C is read.
irq8:
    push ax
    mov al, 0x0C
    out 0x70, al
    in al, 0x71
    jmp irq_slave.eoi

; Other IRQs nobody handles: acknowledge so the controller keeps delivering lower priorities.
irq_master:
    push ax
    mov al, 0x20
    out 0x20, al
    pop ax
    iret

irq_slave:
    push ax
.eoi:
    mov al, 0x20
    out 0xA0, al
    out 0x20, al
    pop ax
    iret

default_handler:
    iret

; ---------------------------------------------------------------------------------------------
; IVT entries: vector, offset, segment.
vector_table:
    dw 0x08, irq0, ROM_SEG
    dw 0x09, irq_master, ROM_SEG
    dw 0x0A, irq_master, ROM_SEG
    dw 0x0B, irq_master, ROM_SEG
    dw 0x0C, irq_master, ROM_SEG
    dw 0x0D, irq_master, ROM_SEG
    dw 0x0E, irq_master, ROM_SEG
    dw 0x0F, irq_master, ROM_SEG
    dw 0x10, service_10, ROM_SEG
    dw 0x11, service_11, ROM_SEG
    dw 0x12, service_12, ROM_SEG
    dw 0x13, service_13, ROM_SEG
    dw 0x15, service_15, ROM_SEG
    dw 0x16, service_16, ROM_SEG
    dw 0x18, int18, ROM_SEG
    dw 0x19, int19, ROM_SEG
    dw 0x1A, service_1A, ROM_SEG
    dw 0x1D, 0, 0                   ; video parameter table: none
    dw 0x1E, diskette_params, ROM_SEG
    dw 0x1F, 0, 0                   ; graphics font: none (text mode only)
    dw 0x41, 0, 0                   ; fixed disk parameter tables: none (use int 13h 08h/48h)
    dw 0x43, 0, 0
    dw 0x46, 0, 0
    dw 0x70, irq8, ROM_SEG
    dw 0x71, irq_slave, ROM_SEG
    dw 0x72, irq_slave, ROM_SEG
    dw 0x73, irq_slave, ROM_SEG
    dw 0x74, irq_slave, ROM_SEG
    dw 0x75, irq_slave, ROM_SEG
    dw 0x76, irq_slave, ROM_SEG
    dw 0x77, irq_slave, ROM_SEG
    dw 0xFFFF

; ---------------------------------------------------------------------------------------------
; Tables at the addresses the IBM PC/AT BIOS used (software of that era hard-codes them).

    times 0xE6F5 - ($ - $$) db 0xFF
; int 15h C0h system configuration table (emu/firmware/bios/system.py CONFIG_TABLE).
config_table:
    dw 8                            ; bytes that follow
    db 0xFC                         ; model: AT
    db 0x00                         ; submodel
    db 0x01                         ; BIOS revision
    db 0x74                         ; features: 2nd 8259, RTC, int 15h 4Fh hook, EBDA allocated
    db 0x00, 0x00, 0x00, 0x00

    times 0xEFC7 - ($ - $$) db 0xFF
; Diskette parameter table (int 1Eh; int 13h 08h ES:DI): 1.44 MB, 18 sectors per track.
diskette_params:
    db 0xDF                         ; step rate 3 ms, head unload 240 ms
    db 0x02                         ; head load 4 ms, DMA mode
    db 0x25                         ; motor-off delay in ticks
    db 0x02                         ; 512-byte sectors
    db 18                           ; sectors per track
    db 0x1B                         ; gap length
    db 0xFF                         ; data length
    db 0x6C                         ; format gap length
    db 0xF6                         ; format filler byte
    db 0x0F                         ; head settle time in ms
    db 0x08                         ; motor start time in 1/8 s

; ---------------------------------------------------------------------------------------------
; Reset vector, release date and model byte at their fixed places.
    times 0xFFF0 - ($ - $$) db 0xFF
reset_vector:
    jmp ROM_SEG:post
    db "11/21/26"                   ; F000:FFF5 BIOS date
    db 0xFF
    db 0xFC                         ; F000:FFFE model byte: AT
    db 0xFF
