"""A National Semiconductor 16550A UART, as wired to a PC COM port.

Transmission is instantaneous: a byte written to THR goes straight to `output`, so THR and the
transmitter are always empty again by the time the guest looks (LSR.THRE and LSR.TEMT stay set
and the THR-empty interrupt re-arms after every write, as it would once a real UART had shifted
the byte out). Host input is not paced by a baud clock either: `feed` fills the RX FIFO as far as
the guest has room and keeps the rest in a host-side queue that drains as the guest reads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from enum import IntEnum

from emu import layout
from emu.bus import Bus

FIFO_SIZE = 16
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # indexed by FCR bits 7:6


class Reg(IntEnum):
    """Register offsets from the base port (DLAB=1 turns 0 and 1 into the divisor latch)."""

    RBR_THR_DLL = 0
    IER_DLM = 1
    IIR_FCR = 2
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


class IntId(IntEnum):
    """IIR bits 3:0, highest priority first (bit 0 clear means an interrupt is pending)."""

    LINE_STATUS = 0x06
    RX_DATA = 0x04
    RX_TIMEOUT = 0x0C  # FIFO mode: data below the trigger level (same priority as RX_DATA)
    THR_EMPTY = 0x02
    MODEM_STATUS = 0x00
    NONE = 0x01


# Plain ints rather than IntFlag members: these are on the path of every guest access.
IER_ERBFI = 0x01  # received data available
IER_ETBEI = 0x02  # transmitter holding register empty
IER_ELSI = 0x04  # receiver line status
IER_EDSSI = 0x08  # modem status
IER_MASK = 0x0F  # bits 7:4 are hard-wired to 0 on a 16550A (Linux probes for that)

IIR_FIFOS_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08  # on a PC, gates the UART's interrupt output onto the ISA IRQ line
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

# What the host end of the line presents: a connected, ready peer (CTS, DSR and DCD asserted,
# no ring), so guests that honour hardware flow control transmit.
HOST_MODEM_LINES = MSR_CTS | MSR_DSR | MSR_DCD

POWER_ON_DIVISOR = 12  # 9600 baud; the latch is undefined at power-on, this is a common value


class Serial16550A:
    """A 16550A UART with a 16-byte RX FIFO at `base` (8 ports).

    `irq(level)` is called, with the lock held, only when the PC's IRQ line changes level; it
    may be called from the thread that calls `feed`. `output(data)` receives each transmitted
    byte as it is written, outside the lock.
    """

    def __init__(
        self,
        irq: Callable[[bool], None],
        output: Callable[[bytes], None],
        base: int = layout.PORT_COM1,
    ) -> None:
        self._irq = irq
        self._output = output
        self.base = base
        # Reentrant so that an irq callback which reads device state cannot deadlock.
        self._lock = threading.RLock()
        self._irq_level = False
        self._rx: deque[int] = deque()  # RX FIFO (holds at most one byte in 16450 mode)
        self._host: deque[int] = deque()  # host input the guest has no room for yet
        self._init_registers()

    def _init_registers(self) -> None:
        """The UART's master-reset state. The divisor latch and scratch register are undefined
        at power-on; they get fixed values so that every boot starts the same."""
        self._dll = POWER_ON_DIVISOR
        self._dlm = 0
        self._scr = 0
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._rx.clear()
        self._last_rx = 0  # RBR keeps returning the last byte once the FIFO is empty
        self._line_errors = 0  # LSR error bits, sticky until LSR is read
        self._rx_quiet = False  # momentarily hides RX interrupts while RBR is being read
        self._thr_ipending = False
        self._msr_lines = self._modem_lines()
        self._msr_deltas = 0

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_pio(self.base, 8, self, f"16550A UART {self.base:#x}")

    def reset(self) -> None:
        with self._lock:
            self._init_registers()
            self._host.clear()  # input typed for the previous boot is not for this one
            self._update_irq()

    # -- host side ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Host input for the guest (thread-safe). Nothing is dropped: what does not fit in the
        RX FIFO waits in a host-side queue."""
        if not data:
            return
        with self._lock:
            self._host.extend(data)
            self._pump()
            self._update_irq()

    @property
    def pending_input(self) -> int:
        """Bytes fed by the host that the guest has not read yet (FIFO and host queue)."""
        with self._lock:
            held = 0 if self._mcr & MCR_LOOP else len(self._rx)
            return held + len(self._host)

    @property
    def divisor(self) -> int:
        with self._lock:
            return self._dlm << 8 | self._dll

    # -- guest side -----------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if size == 1:
            return self._read(offset)
        # A wider access to an 8-bit ISA device is split into byte accesses by the bus.
        value = 0
        for i in range(size):
            byte = self._read(offset + i) if offset + i < 8 else 0xFF
            value |= byte << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i < 8:
                self._write(offset + i, (value >> (8 * i)) & 0xFF)

    def _read(self, offset: int) -> int:
        with self._lock:
            dlab = self._lcr & LCR_DLAB
            if offset == Reg.RBR_THR_DLL:
                return self._dll if dlab else self._read_rbr()
            if offset == Reg.IER_DLM:
                return self._dlm if dlab else self._ier
            if offset == Reg.IIR_FCR:
                return self._read_iir()
            if offset == Reg.LCR:
                return self._lcr
            if offset == Reg.MCR:
                return self._mcr
            if offset == Reg.LSR:
                return self._read_lsr()
            if offset == Reg.MSR:
                return self._read_msr()
            return self._scr

    def _write(self, offset: int, value: int) -> None:
        transmit = False
        with self._lock:
            dlab = self._lcr & LCR_DLAB
            if offset == Reg.RBR_THR_DLL:
                if dlab:
                    self._dll = value
                else:
                    transmit = self._write_thr(value)
            elif offset == Reg.IER_DLM:
                if dlab:
                    self._dlm = value
                else:
                    self._write_ier(value)
            elif offset == Reg.IIR_FCR:
                self._write_fcr(value)
            elif offset == Reg.LCR:
                self._lcr = value  # break control (bit 6) has no wire to act on
            elif offset == Reg.MCR:
                self._write_mcr(value)
            elif offset == Reg.SCR:
                self._scr = value
            # LSR and MSR writes are factory-test only on a 16550A: ignored.
        if transmit:
            self._output(bytes((value,)))

    # -- registers ------------------------------------------------------------------------------
    def _read_rbr(self) -> int:
        if self._rx:
            self._last_rx = self._rx.popleft()
            if not self._fifo_enabled or len(self._rx) < self._rx_trigger:
                # Reading RBR clears DR (16450 mode) or restarts the character timeout (below
                # the trigger level); on real hardware the next character or timeout comes a
                # few character times later. Let the line drop first, so that its return is a
                # new edge for an edge-triggered PIC and a one-byte-per-interrupt ISR still
                # gets called for the rest.
                self._rx_quiet = True
                self._update_irq()
                self._rx_quiet = False
            self._pump()
            self._update_irq()
        return self._last_rx

    def _write_thr(self, value: int) -> bool:
        """Returns True when the byte leaves on the wire (not in loopback)."""
        # Writing THR clears the THR-empty interrupt; the byte is sent at once, THR is empty
        # again and the interrupt re-arms. The line may therefore drop and rise again, which
        # is the edge a real UART produces one character time later.
        self._thr_ipending = False
        self._update_irq()
        if self._mcr & MCR_LOOP:
            self._receive_looped(value)
        self._thr_ipending = bool(self._ier & IER_ETBEI)
        self._update_irq()
        return not self._mcr & MCR_LOOP

    def _write_ier(self, value: int) -> None:
        value &= IER_MASK
        rising = value & ~self._ier & IER_ETBEI
        self._ier = value
        if rising:
            self._thr_ipending = True  # THR is always empty, so enabling ETBEI raises it
        elif not value & IER_ETBEI:
            self._thr_ipending = False
        self._update_irq()

    def _read_iir(self) -> int:
        ident = self._interrupt_id()
        if ident == IntId.THR_EMPTY:
            self._thr_ipending = False  # reading IIR clears THRE only when it is the source
            self._update_irq()
        return ident | (IIR_FIFOS_ENABLED if self._fifo_enabled else 0)

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            self._rx.clear()  # switching between 16450 and FIFO mode empties both FIFOs
            self._fifo_enabled = enable
        if enable:  # the other FCR bits are only programmed while bit 0 is written as 1
            if value & FCR_CLEAR_RX:
                self._rx.clear()
            # FCR_CLEAR_TX: the transmit FIFO is always empty already.
            self._rx_trigger = RX_TRIGGER_LEVELS[value >> 6]
        self._pump()
        self._update_irq()

    def _write_mcr(self, value: int) -> None:
        self._mcr = value & MCR_MASK
        lines = self._modem_lines()
        changed = lines ^ self._msr_lines
        if changed & MSR_CTS:
            self._msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self._msr_deltas |= MSR_DDCD
        if self._msr_lines & ~lines & MSR_RI:
            self._msr_deltas |= MSR_TERI  # trailing edge of RI only
        self._msr_lines = lines
        self._pump()  # leaving loopback reconnects the host input
        self._update_irq()

    def _read_lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT | self._line_errors
        if self._rx:
            value |= LSR_DR
        if self._line_errors:
            self._line_errors = 0
            self._update_irq()
        return value

    def _read_msr(self) -> int:
        value = self._msr_lines | self._msr_deltas
        if self._msr_deltas:
            self._msr_deltas = 0
            self._update_irq()
        return value

    # -- internals (lock held) ------------------------------------------------------------------
    def _modem_lines(self) -> int:
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return HOST_MODEM_LINES
        # Loopback wires the modem outputs to the inputs: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        return (
            (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_CTS if mcr & MCR_RTS else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0)
            | (MSR_DCD if mcr & MCR_OUT2 else 0)
        )

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _pump(self) -> None:
        """Move host input into the RX FIFO while it has room (never in loopback mode, where the
        serial input pin is disconnected)."""
        if self._mcr & MCR_LOOP or not self._host:
            return
        room = self._rx_capacity() - len(self._rx)
        while room > 0 and self._host:
            self._rx.append(self._host.popleft())
            room -= 1

    def _receive_looped(self, value: int) -> None:
        """A character arriving from the loopback path, which nothing paces: it can overrun."""
        if len(self._rx) < self._rx_capacity():
            self._rx.append(value)
            return
        self._line_errors |= LSR_OE
        if not self._fifo_enabled:
            self._rx[-1] = value  # 16450 mode: the new character overwrites RBR
        # FIFO mode: the character in the shift register is lost, the FIFO is kept.

    def _interrupt_id(self) -> int:
        ier = self._ier
        if ier & IER_ELSI and self._line_errors:
            return IntId.LINE_STATUS
        if ier & IER_ERBFI and self._rx and not self._rx_quiet:
            if not self._fifo_enabled or len(self._rx) >= self._rx_trigger:
                return IntId.RX_DATA
            # Below the trigger level a real UART reports a character timeout after four idle
            # character times; emu has no character clock, so the timeout is already due.
            return IntId.RX_TIMEOUT
        if ier & IER_ETBEI and self._thr_ipending:
            return IntId.THR_EMPTY
        if ier & IER_EDSSI and self._msr_deltas:
            return IntId.MODEM_STATUS
        return IntId.NONE

    def _update_irq(self) -> None:
        # OUT2 drives the PC's tri-state buffer in front of the IRQ line; loopback forces the
        # OUT2 pin inactive, so no interrupt reaches the PIC in loopback mode either.
        level = self._mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2 and self._interrupt_id() != IntId.NONE
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)
