; apic_eoi_level: a level-triggered IOAPIC entry and the EOI that re-arms it (82093AA remote IRR,
; SDM vol. 3A 10.8.5), in 64-bit long mode with both 8259s masked. The line is COM1's IRQ 4,
; which the guest holds high: with IER.ETBEI set (and MCR.OUT2, the PC's gate in front of the
; IRQ line), a 16550 asserts its interrupt while THR is empty - always, here - until IER changes
; (reading IIR would clear it too; nothing here does). Pin 4 (ISA IRQ 4 on pin 4 in emu's MP
; table) is programmed level-triggered, active high, vector 0x43, physical destination 0; its
; handler counts and does not EOI. Checked: raising the line sets remote IRR and the vector's
; IRR and TMR bits in the local APIC; the handler runs once; without an EOI the IOAPIC sends
; nothing more while the line stays high; an EOI with the line still high sends it again (remote
; IRR set again, the handler runs a second time); with the line low (ETBEI cleared) an EOI clears
; remote IRR and nothing follows. Printing writes THR, which pulses the line; the prints sit
; where remote IRR is set or the line is off, so they cannot change what is measured.
%include "lib.inc"
%include "apic.inc"
%define UART_PIN    4
%define VEC_UART    0x43
%define COUNT       VARS + 0x00
%define IER_ETBEI   0x02
%define MCR_DTR_RTS_OUT2 0x0B

; VEC_BIT reg - EAX = VEC_UART's bit (0 when clear) in the local APIC's 256-bit register `reg`
; (APIC_IRR, APIC_TMR).
%macro VEC_BIT 1
    mov eax, [LAPIC + (%1) + 0x20]      ; vectors 0x40-0x5F
    and eax, 1 << (VEC_UART - 0x40)
%endmacro

    SNIPPET_START
    PRINT "apic_eoi_level: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE VEC_UART, uart_handler
    call lapic_enable

    mov dx, COM1_MCR
    mov al, MCR_DTR_RTS_OUT2
    out dx, al
    mov ecx, IOAPIC_RTE(UART_PIN) + 1
    xor eax, eax
    call ioapic_write
    mov ecx, IOAPIC_RTE(UART_PIN)
    mov eax, RTE_LEVEL | VEC_UART       ; fixed, physical, level, active high, unmasked
    call ioapic_write
    call ioapic_read
    mov ebx, eax
    PRINT "uart pin programmed, line low: "
    PUTHEX rbx, 8
    PUTC 10

    ; Raise the line (interrupts off): the IOAPIC sends the vector and sets remote IRR.
    mov dx, COM1_IER
    mov al, IER_ETBEI
    out dx, al
    mov ecx, IOAPIC_RTE(UART_PIN)
    call ioapic_read
    mov ebx, eax
    PRINT "line high: "
    PUTHEX rbx, 8
    PUTC 10
    test ebx, RTE_REMOTE_IRR
    setz al
    test al, al
    RESULT_ZF "line high: remote IRR set"
    VEC_BIT APIC_IRR
    mov ebx, eax
    VEC_BIT APIC_TMR
    and eax, ebx
    cmp eax, 1 << (VEC_UART - 0x40)
    RESULT_ZF "line high: vector pending in IRR, TMR set (level)"

    mov edi, VEC_UART
    call take_if_pending
    cmp qword [COUNT], 1
    RESULT_ZF "handler ran once"

    ; No EOI: remote IRR stays set, the IOAPIC sends nothing although the line is still high.
    STI_WAIT MS(5)
    mov ecx, IOAPIC_RTE(UART_PIN)
    call ioapic_read
    and eax, RTE_REMOTE_IRR
    mov ebx, eax
    VEC_BIT APIC_IRR
    or eax, ebx
    mov rbx, [COUNT]
    dec rbx
    or rax, rbx
    cmp rax, RTE_REMOTE_IRR
    RESULT_ZF "no EOI: remote IRR still set, nothing sent again"

    ; EOI with the line still high: the vector is sent again.
    mov dword [LAPIC + APIC_EOI], 0
    mov ecx, IOAPIC_RTE(UART_PIN)
    call ioapic_read
    test eax, RTE_REMOTE_IRR
    setz al
    test al, al
    RESULT_ZF "EOI, line still high: remote IRR set again"
    mov edi, VEC_UART
    call take_if_pending
    cmp qword [COUNT], 2
    RESULT_ZF "EOI, line still high: handler ran again"

    ; Line low, then EOI: remote IRR clears and nothing follows.
    mov dx, COM1_IER
    xor eax, eax
    out dx, al
    mov dword [LAPIC + APIC_EOI], 0
    STI_WAIT MS(5)
    mov edi, VEC_UART
    call take_if_pending
    mov ecx, IOAPIC_RTE(UART_PIN)
    call ioapic_read
    and eax, RTE_REMOTE_IRR
    mov rbx, [COUNT]
    sub rbx, 2
    or rax, rbx
    RESULT_ZF "line low, EOI: remote IRR clear, handler not run again"

    mov ecx, IOAPIC_RTE(UART_PIN)
    mov eax, RTE_MASKED | RTE_LEVEL | VEC_UART
    call ioapic_write
    call stray_report
    PRINT "apic_eoi_level: done", 10
    HALT

uart_handler:                           ; counts; the EOI is the main flow's business
    inc qword [COUNT]
    iretq

    APIC_GUEST_END
