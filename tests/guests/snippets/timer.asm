; timer: external interrupts in real mode. The 8259 pair is initialised as a BIOS does (master
; vectors 0x20-0x27, slave 0x28-0x2F, everything masked but IRQ 0), the 8254's channel 0 runs
; in mode 2 at 100 Hz, and the IRQ 0 handler counts and sends EOI. The CPU waits in `sti; hlt`,
; so every interrupt arrives during hlt. The CMOS RTC's seconds register gives a known
; interval: the ticks counted between two of its updates (one second) must be 100 +- 5.
%include "lib.inc"
%include "pic.inc"
%define TICKS     0x0600
%define RATE      100

    SNIPPET_START
    PRINT "timer: programming the PIC and PIT", 10
    mov word [0x20 * 4], irq0
    mov word [0x20 * 4 + 2], 0
    mov dword [TICKS], 0

    PIC_PIT_IRQ0 RATE

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
