; ioapic_pit: the PIT's channel 0 through the IOAPIC (82093AA) in 64-bit long mode, with both
; 8259s masked. Prints the IOAPIC version register (version 0x11, max redirection entry 0x17)
; and checks the PIT's pin is masked at reset; programs it (vector 0x42, fixed, physical
; destination APIC ID 0, edge, active high), first masked, reading the entry back; starts the PIT
; at 100 Hz and unmasks the pin: the first tick wakes the CPU from hlt, 20 ticks take 200 ms
; +- 30% of PIT channel 1's reference clock, and the entry reads back unchanged (its delivery
; status bit, a transient, left out). Then the pin is masked again: no more ticks arrive.
;
; Which pin: emu's MP table (emu/firmware/tables/mptable.py) wires ISA IRQ n to IOAPIC pin n,
; IRQ 0 included (Firecracker's layout, and what KVM's default GSI routing does), so the PIT is
; on pin 0 here, not on pin 2 as on QEMU/SeaBIOS, whose MP table says so with an interrupt
; source override. Reading the MP table in the guest would be overkill: PIT_PIN says it, and
; can be overridden (nasm -DPIT_PIN=2) to run this image under QEMU.
%include "lib.inc"
%include "apic.inc"
%ifndef PIT_PIN
  %define PIT_PIN   0
%endif
%define VEC_TICK    0x42
%define TICKS       VARS + 0x00
%define RATE        100

    SNIPPET_START
    PRINT "ioapic_pit: long mode, 8259s masked", 10
    ENTER_LONG_APIC
    SET_GATE VEC_TICK, tick_handler
    call lapic_enable

    mov ecx, IOAPIC_REG_VER
    call ioapic_read
    mov ebx, eax
    PRINT "ioapic version register: "
    PUTHEX rbx, 8
    PUTC 10
    mov ecx, IOAPIC_RTE(PIT_PIN)
    call ioapic_read
    test eax, RTE_MASKED
    setz al                             ; ZF wanted: masked
    test al, al
    RESULT_ZF "pit pin masked at reset"

    ; The entry, masked: the high dword (destination) first, then the low one.
    mov ecx, IOAPIC_RTE(PIT_PIN) + 1
    xor eax, eax                        ; APIC ID 0 in bits 63:56
    call ioapic_write
    mov ecx, IOAPIC_RTE(PIT_PIN)
    mov eax, RTE_MASKED | VEC_TICK      ; fixed, physical, edge, active high
    call ioapic_write
    call ioapic_read
    mov ebx, eax
    mov ecx, IOAPIC_RTE(PIT_PIN) + 1
    call ioapic_read
    mov r12d, eax
    PRINT "pit pin programmed: "
    PUTHEX r12, 8
    PUTC ' '
    PUTHEX rbx, 8
    PUTC 10

    ; PIT channel 0: mode 2, 100 Hz; then unmask.
    mov al, 0x34
    out 0x43, al
    mov ax, PIT_CLOCK / RATE
    out 0x40, al
    mov al, ah
    out 0x40, al
    mov qword [TICKS], 0
    mov ecx, IOAPIC_RTE(PIT_PIN)
    mov eax, VEC_TICK
    call ioapic_write
    HLT_UNTIL_SET [TICKS]
    PRINT "woke from hlt on vector 42", 10

    call ref_now
    mov r12, rax
    mov qword [TICKS], 0
.count:
    sti
    hlt
    cli
    call ref_now                        ; (also keeps the reference clock read every 10 ms)
    cmp qword [TICKS], 20
    jb .count
    sub rax, r12
    RANGE "20 ticks in 200 ms +- 30%", rax, MS(140), MS(260)
    mov ecx, IOAPIC_RTE(PIT_PIN)
    call ioapic_read
    and eax, ~(1 << 12)                 ; delivery status: "send pending", a transient
    mov ebx, eax
    PRINT "pit pin while ticking: "
    PUTHEX rbx, 8
    PUTC 10

    mov ecx, IOAPIC_RTE(PIT_PIN)
    mov eax, RTE_MASKED | VEC_TICK
    call ioapic_write
    mov edi, VEC_TICK                   ; a tick sent before the mask may still be pending
    call take_if_pending
    mov rbx, [TICKS]
    STI_WAIT MS(50)
    sub rbx, [TICKS]
    mov eax, [LAPIC + APIC_IRR + 0x20]
    and eax, 1 << (VEC_TICK - 0x40)
    or rax, rbx
    RESULT_ZF "pin masked: no tick in 50 ms"

    call stray_report
    PRINT "ioapic_pit: done", 10
    HALT

tick_handler:
    inc qword [TICKS]
    mov dword [LAPIC + APIC_EOI], 0
    iretq

    APIC_GUEST_END
