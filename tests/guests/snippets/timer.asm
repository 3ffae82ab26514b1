; timer: external interrupts in real mode. The 8259 pair is initialised as a BIOS does (master
; vectors 0x20-0x27, slave 0x28-0x2F, everything masked but IRQ 0), the 8254's channel 0 runs
; in mode 2 at 100 Hz, and the IRQ 0 handler counts and sends EOI. The CPU waits in `sti; hlt`,
; so every interrupt arrives during hlt. The CMOS RTC's seconds register gives a known
; interval: the ticks counted between two of its updates (one second) must be 100 +- 5.
%include "lib.inc"
%define TICKS     0x0600
%define PIT_HZ    1193182
%define RATE      100

    SNIPPET_START
    PRINT "timer: programming the PIC and PIT", 10
    mov word [0x20 * 4], irq0
    mov word [0x20 * 4 + 2], 0
    mov dword [TICKS], 0

    mov al, 0x11                    ; ICW1: edge, cascade, ICW4 follows
    out 0x20, al
    out 0xA0, al
    mov al, 0x20                    ; ICW2: vector bases
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4                       ; ICW3: slave on IRQ 2
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1                       ; ICW4: 8086 mode, normal EOI
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE                    ; OCW1: only IRQ 0
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al

    mov al, 0x34                    ; channel 0, lobyte/hibyte, mode 2, binary
    out 0x43, al
    mov ax, PIT_HZ / RATE
    out 0x40, al
    mov al, ah
    out 0x40, al

    sti
    hlt                             ; the first tick wakes us
    cli
    mov eax, [TICKS]
    cmp eax, 1
    jb .no_wake
    PRINT "woke from hlt on IRQ 0", 10

    call rtc_edge                   ; start of an RTC second
    mov dword [TICKS], 0
    call rtc_edge                   ; end of it
    mov ebx, [TICKS]
    cmp ebx, RATE - 5
    jb .bad
    cmp ebx, RATE + 5
    ja .bad
    PRINT "ticks in one RTC second: 100 +- 5", 10
    PRINT "timer: done", 10
    HALT
.no_wake:
    PRINT "hlt returned without a tick", 10
    HALT
.bad:
    PRINT "ticks in one RTC second: "
    PUTHEX ebx, 8
    PUTC 10
    HALT

; rtc_edge: wait in `sti; hlt` until the RTC's seconds register changes.
rtc_edge:
    call rtc_seconds
    mov bl, al
.wait:
    sti
    hlt
    cli
    call rtc_seconds
    cmp al, bl
    je .wait
    ret

rtc_seconds:
    mov al, 0x0A                    ; wait out an update in progress (register A bit 7)
    out 0x70, al
    in al, 0x71
    test al, 0x80
    jnz rtc_seconds
    mov al, 0x00
    out 0x70, al
    in al, 0x71
    ret

irq0:
    inc dword [cs:TICKS]
    push ax
    mov al, 0x20                    ; non-specific EOI
    out 0x20, al
    pop ax
    iret

    LIB_ROUTINES
