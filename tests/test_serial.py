"""The 16550A UART, driven through the bus the way guest drivers drive it."""

from __future__ import annotations

import threading
import time

import pytest

from emu import layout
from emu.bus import Bus
from emu.devices.serial import Serial16550A

COM1 = layout.PORT_COM1
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Guest:
    """A bus with COM1 on it, plus what the PIC and the console would see."""

    def __init__(self) -> None:
        self.bus = Bus()
        self.irq_events: list[bool] = []
        self.output = bytearray()
        self.uart = Serial16550A(irq=self.irq_events.append, output=self.output.extend)
        self.uart.register(self.bus)

    def inb(self, reg: int) -> int:
        return self.bus.pio_read(COM1 + reg, 1)

    def outb(self, reg: int, value: int) -> None:
        self.bus.pio_write(COM1 + reg, 1, value)

    @property
    def irq(self) -> bool:
        return self.irq_events[-1] if self.irq_events else False

    def drain_rx(self) -> bytes:
        data = bytearray()
        while self.inb(LSR) & 0x01:
            data.append(self.inb(RBR))
        return bytes(data)


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_power_on_registers(g: Guest) -> None:
    assert g.inb(IER) == 0
    assert g.inb(IIR) == 0x01  # no interrupt pending, FIFOs off
    assert g.inb(LCR) == 0
    assert g.inb(MCR) == 0
    assert g.inb(LSR) == 0x60  # THRE | TEMT
    assert g.inb(MSR) == 0xB0  # CTS, DSR, DCD from the host end, no deltas
    assert g.bus.pio_read(COM1 + 8, 1) == 0xFF  # the UART spans exactly 8 ports


def test_linux_8250_autoconfig_finds_a_16550a(g: Guest) -> None:
    # IER existence test: the low nibble is read/write.
    saved = g.inb(IER)
    g.outb(IER, 0)
    assert g.inb(IER) & 0x0F == 0
    g.outb(IER, 0x0F)
    assert g.inb(IER) & 0x0F == 0x0F
    g.outb(IER, saved)
    # Loopback test: RTS and OUT2 come back as CTS and DCD.
    save_mcr = g.inb(MCR)
    g.outb(MCR, 0x10 | 0x0A)
    assert g.inb(MSR) & 0xF0 == 0x90
    g.outb(MCR, save_mcr)
    # No EFR behind LCR=0xBF: offset 2 stays FCR, and enabling the FIFOs shows 0xC0 in IIR.
    g.outb(LCR, 0xBF)
    g.outb(FCR, 0)
    g.outb(LCR, 0)
    g.outb(FCR, 0x01)
    assert g.inb(IIR) & 0xC0 == 0xC0
    # Not a 16750: the 64-byte FIFO bit does not stick, with or without DLAB.
    g.outb(FCR, 0x21)
    assert g.inb(IIR) & 0xE0 == 0xC0
    g.outb(LCR, 0x80)
    g.outb(FCR, 0x21)
    assert g.inb(IIR) & 0xE0 == 0xC0
    g.outb(LCR, 0)
    # Not an XScale UART: IER bit 6 is hard-wired to 0.
    g.outb(IER, 0x40)
    assert g.inb(IER) == 0
    # Scratch register (the 8250/16450 check).
    for value in (0xA5, 0x5A):
        g.outb(SCR, value)
        assert g.inb(SCR) == value
    # OUT2 was never set: the probe raised no interrupt.
    assert g.irq_events == []
    assert g.output == b""


def test_loopback_returns_transmitted_bytes_and_sends_nothing(g: Guest) -> None:
    g.outb(FCR, 0x07)
    g.outb(MCR, 0x10)
    for ch in b"ping":
        g.outb(THR, ch)
    assert g.drain_rx() == b"ping"
    assert g.output == b""
    g.outb(MCR, 0x00)
    g.outb(THR, ord("!"))
    assert g.output == b"!"
    assert g.inb(LSR) & 0x01 == 0


def test_loopback_disconnects_host_input_until_it_ends(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.outb(MCR, 0x10)
    g.uart.feed(b"host")
    assert g.inb(LSR) & 0x01 == 0
    g.outb(THR, ord("L"))
    assert g.drain_rx() == b"L"
    g.outb(MCR, 0x00)
    assert g.drain_rx() == b"host"


def test_polled_transmit_waits_for_thre(g: Guest) -> None:
    g.outb(LCR, 0x03)
    message = b"Linux version 6.x\r\n"
    for ch in message:
        for _ in range(1000):  # bounded spin, as a guest would loop on LSR
            if g.inb(LSR) & 0x20:
                break
        else:
            pytest.fail("THRE never set")
        g.outb(THR, ch)
    assert g.output == message
    assert g.inb(LSR) & 0x60 == 0x60  # transmitter idle again


def test_dlab_selects_the_divisor_latch(g: Guest) -> None:
    g.uart.feed(b"x")
    g.outb(IER, 0x01)
    g.outb(LCR, 0x83)  # DLAB, 8N1
    g.outb(DLL, 0x01)
    g.outb(DLM, 0x00)
    assert (g.inb(DLL), g.inb(DLM)) == (0x01, 0x00)
    assert g.inb(LSR) & 0x01  # reading DLL did not consume the received byte
    assert g.output == b""  # nor did writing DLL transmit
    g.outb(LCR, 0x03)
    assert g.uart.divisor == 1
    assert g.inb(IER) == 0x01  # IER was untouched behind the latch
    assert g.inb(RBR) == ord("x")
    g.outb(THR, ord("y"))
    assert g.output == b"y"
    # A 16-bit write programs both latch bytes at once, as `out dx, ax` does on the ISA bus.
    g.outb(LCR, 0x80)
    g.bus.pio_write(COM1, 2, 0x0180)
    assert (g.inb(DLL), g.inb(DLM)) == (0x80, 0x01)
    assert g.bus.pio_read(COM1, 2) == 0x0180


def test_interrupt_driven_rx_with_fifo_trigger_levels(g: Guest) -> None:
    g.outb(LCR, 0x03)
    g.outb(FCR, 0x47)  # FIFOs on and cleared, RX trigger at 4 bytes
    g.outb(MCR, 0x0B)  # DTR, RTS, OUT2
    g.outb(IER, 0x01)
    assert not g.irq
    g.uart.feed(b"ab")
    assert g.irq
    assert g.inb(IIR) == 0xCC  # below the trigger level: character timeout
    g.uart.feed(b"cd")
    assert g.inb(IIR) == 0xC4  # trigger level reached: received data available
    assert g.drain_rx() == b"abcd"
    assert g.inb(IIR) == 0xC1
    assert not g.irq

    g.outb(FCR, 0xC1)  # trigger at 14
    g.uart.feed(bytes(range(14)))
    assert g.inb(IIR) == 0xC4
    assert g.inb(RBR) == 0
    assert g.inb(IIR) == 0xCC  # 13 left, below 14
    assert g.drain_rx() == bytes(range(1, 14))
    assert not g.irq


def test_rx_line_stays_up_above_the_trigger_and_pulses_below_it(g: Guest) -> None:
    g.outb(FCR, 0x81)  # trigger at 8
    g.outb(MCR, 0x08)
    g.outb(IER, 0x01)
    g.uart.feed(bytes(12))
    assert g.irq_events == [True]
    for _ in range(4):  # 11..8 left: still at the trigger level, the line just stays up
        g.inb(RBR)
    assert g.irq_events == [True]
    g.inb(RBR)  # 7 left: the timeout restarts, and comes back as a new edge
    assert g.irq_events == [True, False, True]


def test_one_byte_per_interrupt_isr_gets_every_byte(g: Guest) -> None:
    # A minimal ISR (read one byte, EOI, return) relies on an edge for each byte.
    g.outb(FCR, 0xC7)
    g.outb(MCR, 0x08)
    g.outb(IER, 0x01)
    g.uart.feed(b"paste")
    received = bytearray()
    seen = 0
    while seen < len(g.irq_events):  # each rising edge is one interrupt
        if g.irq_events[seen]:
            received.append(g.inb(RBR))
        seen += 1
    assert received == b"paste"
    assert not g.irq


def test_rx_interrupt_without_fifo(g: Guest) -> None:
    g.outb(MCR, 0x08)
    g.outb(IER, 0x01)
    g.uart.feed(b"hi")
    assert g.inb(IIR) == 0x04  # no FIFO bits, no timeout id in 16450 mode
    assert g.inb(RBR) == ord("h")
    assert g.irq  # the second byte moved into RBR
    assert g.inb(RBR) == ord("i")
    assert g.inb(IIR) == 0x01
    assert g.irq_events == [True, False, True, False]


def test_iir_reports_sources_in_priority_order(g: Guest) -> None:
    g.outb(IER, 0x0F)
    # Loopback with all modem outputs off: CTS, DSR and DCD drop (three deltas), and two bytes
    # sent into a 16450-mode receiver overrun it.
    g.outb(MCR, 0x10)
    g.outb(THR, 0x11)
    g.outb(THR, 0x22)
    assert g.inb(IIR) == 0x06  # receiver line status
    assert g.inb(LSR) == 0x63  # DR | OE | THRE | TEMT; reading clears OE
    assert g.inb(IIR) == 0x04  # received data
    assert g.inb(RBR) == 0x22  # the overrun replaced the unread byte
    assert g.inb(IIR) == 0x02  # THR empty; this read clears it
    assert g.inb(IIR) == 0x00  # modem status
    assert g.inb(MSR) == 0x0B  # DCTS | DDSR | DDCD, all lines now low
    assert g.inb(IIR) == 0x01
    assert g.irq_events == []  # loopback keeps OUT2 off the IRQ line


def test_thr_empty_interrupt(g: Guest) -> None:
    g.outb(MCR, 0x08)
    g.outb(IER, 0x02)
    assert g.irq  # THR is empty as soon as the interrupt is enabled
    assert g.inb(IIR) == 0x02
    assert not g.irq  # reading IIR with THRE as the source cleared it
    assert g.inb(IIR) == 0x01
    g.outb(THR, ord("a"))  # the byte goes out and THR is empty again
    assert g.irq
    g.outb(THR, ord("b"))  # writing THR clears it, sending re-raises it: a fresh edge
    assert g.irq_events == [True, False, True, False, True]
    assert g.output == b"ab"
    # Linux's UART_BUG_THRE check: THRE must be reasserted when IER.THRI is toggled.
    g.outb(IER, 0x00)
    assert not g.irq
    g.outb(IER, 0x02)
    assert g.inb(IIR) & 0x0F == 0x02
    g.outb(IER, 0x00)
    g.outb(IER, 0x02)
    assert g.inb(IIR) & 0x0F == 0x02


def test_lower_priority_source_is_reported_once_higher_one_clears(g: Guest) -> None:
    g.outb(MCR, 0x08)
    g.outb(IER, 0x03)
    g.uart.feed(b"z")
    assert g.inb(IIR) == 0x04  # RX data outranks THRE
    assert g.inb(RBR) == ord("z")
    assert g.inb(IIR) == 0x02
    assert g.inb(IIR) == 0x01


def test_out2_gates_the_irq_line(g: Guest) -> None:
    g.outb(IER, 0x01)
    g.uart.feed(b"k")
    assert g.irq_events == []
    assert g.inb(IIR) == 0x04  # pending inside the UART nonetheless
    g.outb(MCR, 0x08)
    assert g.irq_events == [True]
    g.outb(MCR, 0x00)
    assert g.irq_events == [True, False]


def test_host_input_beyond_the_fifo_waits_instead_of_being_lost(g: Guest) -> None:
    g.outb(FCR, 0x01)
    data = bytes(range(200))
    g.uart.feed(data)
    assert g.uart.pending_input == 200
    assert g.drain_rx() == data
    assert g.inb(LSR) & 0x02 == 0  # host input never overruns
    g.outb(FCR, 0x00)  # 16450 mode: one byte at a time
    g.uart.feed(b"xyz")
    assert g.drain_rx() == b"xyz"


def test_fifo_clear_drops_only_what_the_fifo_holds(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.uart.feed(bytes(range(20)))  # 16 in the FIFO, 4 waiting on the host side
    g.outb(FCR, 0x03)
    assert g.drain_rx() == bytes(range(16, 20))


def test_overrun_in_fifo_mode_keeps_the_fifo(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.outb(MCR, 0x10)
    g.outb(IER, 0x04)
    for i in range(17):
        g.outb(THR, i)
    assert g.inb(IIR) == 0xC6
    assert g.inb(LSR) & 0x03 == 0x03  # DR and OE
    assert g.inb(LSR) & 0x02 == 0  # OE is cleared by the read
    assert g.inb(IIR) == 0xC1
    assert g.drain_rx() == bytes(range(16))


def test_input_fed_from_another_thread_while_the_guest_reads(g: Guest) -> None:
    g.outb(FCR, 0x87)
    g.outb(MCR, 0x0B)
    g.outb(IER, 0x01)
    data = bytes(i * 7 % 256 for i in range(5000))

    def console() -> None:
        for i in range(0, len(data), 37):
            g.uart.feed(data[i : i + 37])

    feeder = threading.Thread(target=console)
    feeder.start()
    received = bytearray()
    deadline = time.monotonic() + 30
    while len(received) < len(data) and time.monotonic() < deadline:
        if g.inb(IIR) & 0x01 == 0:  # an interrupt is pending: run the ISR
            received += g.drain_rx()
    feeder.join()
    assert bytes(received) == data
    assert g.inb(IIR) == 0xC1
    assert not g.irq


def test_modem_status_in_loopback(g: Guest) -> None:
    g.outb(IER, 0x08)
    g.outb(MCR, 0x11)  # loopback with DTR: DSR stays up, CTS and DCD drop
    assert g.inb(IIR) == 0x00
    assert g.inb(MSR) == 0x29  # DSR | DDCD | DCTS
    assert g.inb(MSR) == 0x20
    g.outb(MCR, 0x15)  # OUT1 -> RI; a rising RI is not a delta
    assert g.inb(MSR) == 0x60
    g.outb(MCR, 0x11)
    assert g.inb(MSR) == 0x24  # trailing edge of RI
    assert g.inb(IIR) == 0x01


def test_reset_returns_to_power_on_state(g: Guest) -> None:
    g.outb(FCR, 0x01)
    g.outb(LCR, 0x03)
    g.outb(MCR, 0x0B)
    g.outb(IER, 0x03)
    g.uart.feed(bytes(40))
    assert g.irq
    g.uart.reset()
    assert not g.irq
    assert [g.inb(r) for r in (IER, IIR, LCR, MCR, LSR, MSR)] == [0, 0x01, 0, 0, 0x60, 0xB0]
    assert g.uart.pending_input == 0
