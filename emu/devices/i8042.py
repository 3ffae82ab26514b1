"""The PC keyboard controller (Intel 8042) with an AT/MF2 keyboard attached, and port 0x92.

The controller's output port carries the two lines a PC needs from it besides the keyboard:
bit 0 (low = hold the CPU in reset) and bit 1 (the A20 gate). Port 0x92 (PS/2 "System Control
Port A") has a second A20 gate and a fast reset. Each device reports its own gate through
`on_a20` (also when reset() changes it) and exposes it as `.a20`: a PC chipset ORs the two,
QEMU lets the last change win; that choice is the machine's.

The auxiliary (PS/2 mouse) channel exists but nothing is plugged into it: bytes sent to the
mouse come back as a timeout, which is what firmware and Linux see on a PC without a mouse.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from emu import layout
from emu.bus import Bus

log = logging.getLogger("emu.i8042")

# Status register (port 0x64, read).
STATUS_OBF = 0x01  # output buffer full
STATUS_IBF = 0x02  # input buffer full: never, commands are processed as they are written
STATUS_SYS = 0x04  # system flag: set by the self-test or from the command byte
STATUS_CMD = 0x08  # last write was to port 0x64
STATUS_UNLOCKED = 0x10  # keyboard inhibit switch not engaged
STATUS_AUXDATA = 0x20  # the output buffer holds a byte from the auxiliary device
STATUS_TIMEOUT = 0x40

# Command byte (controller RAM byte 0).
CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLATE = 0x40

# Output port.
OUTPORT_RESET = 0x01  # active low
OUTPORT_A20 = 0x02
OUTPORT_OBF = 0x10  # drives IRQ 1
OUTPORT_AUXOBF = 0x20  # drives IRQ 12

# Keyboard replies.
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_BAT_OK = 0xAA
KBD_ECHO = 0xEE
AUX_NO_DEVICE = 0xFE  # what comes back, with STATUS_TIMEOUT, from a command to an absent mouse

# Power-on state: QEMU's choices, which PC firmware is developed against. The command byte
# enables both interrupts without translation; the output port has reset inactive and A20 on.
POWER_ON_CTR = CTR_KBDINT | CTR_AUXINT
POWER_ON_OUTPORT = 0xCF
INPUT_PORT = 0x80  # bit 7: keyboard not inhibited
TYPEMATIC_DEFAULT = 0x2B  # 10.9 characters/s after 500 ms
# Keyboard ID and scan-code-set numbers as they reach the CPU through translation.
ID_TRANSLATED, ID_RAW = 0x41, 0x83
SET_TRANSLATED = {1: 0x43, 2: 0x41, 3: 0x3F}


class Cmd(IntEnum):
    """Controller commands (port 0x64) emu implements besides the RAM and pulse ranges."""

    READ_RAM = 0x20  # 0x20-0x3F: read controller RAM byte (0x20 = command byte)
    WRITE_RAM = 0x60  # 0x60-0x7F: write controller RAM byte (0x60 = command byte)
    PASSWORD_INSTALLED = 0xA4
    AUX_DISABLE = 0xA7
    AUX_ENABLE = 0xA8
    AUX_TEST = 0xA9
    SELF_TEST = 0xAA
    KBD_TEST = 0xAB
    KBD_DISABLE = 0xAD
    KBD_ENABLE = 0xAE
    READ_INPUT_PORT = 0xC0
    READ_OUTPUT_PORT = 0xD0
    WRITE_OUTPUT_PORT = 0xD1
    WRITE_KBD_BUFFER = 0xD2
    WRITE_AUX_BUFFER = 0xD3
    WRITE_AUX = 0xD4
    A20_DISABLE = 0xDD
    A20_ENABLE = 0xDF
    READ_TEST_INPUTS = 0xE0
    PULSE = 0xF0  # 0xF0-0xFF: pulse output port bits 3:0 low where the command's bit is 0


class KbdCmd(IntEnum):
    SET_LEDS = 0xED
    ECHO = 0xEE
    SCANCODE_SET = 0xF0
    IDENTIFY = 0xF2
    TYPEMATIC = 0xF3
    ENABLE = 0xF4
    DISABLE = 0xF5  # restore defaults and stop scanning
    DEFAULTS = 0xF6
    RESEND = 0xFE
    RESET = 0xFF


@dataclass(frozen=True, slots=True)
class _Byte:
    """A byte on its way to the output buffer, with the status bits that travel with it."""

    value: int
    aux: bool = False
    timeout: bool = False


@dataclass(frozen=True, slots=True)
class _Effects:
    """Callbacks a register access triggers, run after the lock is released (they may reset
    the machine, which resets this device)."""

    a20: bool | None = None
    reset: bool = False


class I8042:
    """8042 keyboard controller at 0x60 (data) and 0x64 (status/command) with a keyboard.

    `irq1`/`irq12` are called, with the lock held, only when those lines change level;
    `on_a20(enabled)` when output port bit 1 changes; `on_reset()` when the output port's
    reset line is driven low (0xFE pulse, or 0xD1 with bit 0 clear).
    """

    def __init__(
        self,
        irq1: Callable[[bool], None],
        on_reset: Callable[[], None],
        on_a20: Callable[[bool], None],
        irq12: Callable[[bool], None] | None = None,
    ) -> None:
        self._irq1 = irq1
        self._irq12 = irq12
        self._on_reset = on_reset
        self._on_a20 = on_a20
        self._lock = threading.RLock()
        self._irq1_level = False
        self._irq12_level = False
        self._ctl_out: deque[_Byte] = deque()  # the controller's own replies
        self._kbd_reply: deque[int] = deque()  # keyboard replies go ahead of pending scan codes
        self._kbd_scan: deque[int] = deque()
        self._aux_out: deque[_Byte] = deque()
        self._init_state()

    def _init_state(self) -> None:
        self._ram = bytearray(32)
        self._ram[0] = POWER_ON_CTR
        self._outport = POWER_ON_OUTPORT
        self._status_sys = False
        self._last_was_cmd = False
        self._pending: int | None = None  # controller command waiting for its data byte
        self._obuf: _Byte | None = None
        self._last_data = 0
        self._ctl_out.clear()
        self._aux_out.clear()
        self._kbd_reply.clear()
        self._kbd_scan.clear()
        self._kbd_defaults()
        self._kbd_scanning = True
        self._kbd_expect: int | None = None  # keyboard command waiting for its parameter
        self._kbd_last_sent = KBD_BAT_OK

    def _kbd_defaults(self) -> None:
        self.scancode_set = 2
        self.leds = 0
        self.typematic = TYPEMATIC_DEFAULT

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_I8042_DATA, 1, _Port(self._read_data, self._write_data), "i8042 data")
        bus.register_pio(layout.PORT_I8042_CMD, 1, _Port(self._read_status, self._write_cmd), "i8042 cmd")

    def reset(self) -> None:
        with self._lock:
            a20_before = self.a20
            self._init_state()
            self._update_irq()
            effects = _Effects(a20=self.a20 if self.a20 != a20_before else None)
        self._run(effects)

    @property
    def a20(self) -> bool:
        return bool(self._outport & OUTPORT_A20)

    def feed(self, scancodes: bytes) -> None:
        """Key bytes from the host, exactly as the guest should read them from port 0x60
        (emu does not translate set 2 to set 1). Dropped while the guest has scanning off."""
        with self._lock:
            if self._kbd_scanning:
                self._kbd_scan.extend(scancodes)
                self._refill()
                self._update_irq()

    # -- port 0x60 ------------------------------------------------------------------------------
    def _read_data(self) -> int:
        with self._lock:
            if self._obuf is None:
                return self._last_data  # the output buffer keeps its last byte
            self._last_data = self._obuf.value
            self._obuf = None
            self._update_irq()  # drop the line before the next byte raises it: a fresh edge
            self._refill()
            self._update_irq()
            return self._last_data

    def _write_data(self, value: int) -> None:
        effects = _Effects()
        with self._lock:
            self._last_was_cmd = False
            cmd, self._pending = self._pending, None
            if cmd is None:
                self._ram[0] &= ~CTR_KBDDIS  # sending to the keyboard re-enables its interface
                self._kbd_write(value)
            elif Cmd.WRITE_RAM <= cmd < Cmd.WRITE_RAM + 0x20:
                self._ram[cmd & 0x1F] = value
                if cmd == Cmd.WRITE_RAM:
                    self._status_sys = bool(value & CTR_SYS)
            elif cmd == Cmd.WRITE_OUTPUT_PORT:
                effects = self._write_outport(value)
            elif cmd == Cmd.WRITE_KBD_BUFFER:
                self._ctl_out.append(_Byte(value))
            elif cmd == Cmd.WRITE_AUX_BUFFER:
                self._ctl_out.append(_Byte(value, aux=True))
            elif cmd == Cmd.WRITE_AUX:
                self._ram[0] &= ~CTR_AUXDIS
                self._aux_out.append(_Byte(AUX_NO_DEVICE, aux=True, timeout=True))
            self._refill()
            self._update_irq()
        self._run(effects)

    # -- port 0x64 ------------------------------------------------------------------------------
    def _read_status(self) -> int:
        with self._lock:
            status = STATUS_UNLOCKED
            if self._status_sys:
                status |= STATUS_SYS
            if self._last_was_cmd:
                status |= STATUS_CMD
            ob = self._obuf
            if ob is not None:
                status |= STATUS_OBF
                if ob.aux:
                    status |= STATUS_AUXDATA
                if ob.timeout:
                    status |= STATUS_TIMEOUT
            return status

    def _write_cmd(self, cmd: int) -> None:
        effects = _Effects()
        with self._lock:
            self._last_was_cmd = True
            self._pending = None  # a new command abandons one still waiting for its data byte
            reply: int | None = None
            if Cmd.READ_RAM <= cmd < Cmd.READ_RAM + 0x20:
                reply = self._ram[cmd & 0x1F]
            elif Cmd.WRITE_RAM <= cmd < Cmd.WRITE_RAM + 0x20 or cmd in _DATA_COMMANDS:
                self._pending = cmd
            elif cmd == Cmd.PASSWORD_INSTALLED:
                reply = 0xF1  # no password
            elif cmd == Cmd.AUX_DISABLE:
                self._ram[0] |= CTR_AUXDIS
            elif cmd == Cmd.AUX_ENABLE:
                self._ram[0] &= ~CTR_AUXDIS
            elif cmd in (Cmd.AUX_TEST, Cmd.KBD_TEST, Cmd.READ_TEST_INPUTS):
                reply = 0x00  # interface lines OK
            elif cmd == Cmd.SELF_TEST:
                self._status_sys = True
                reply = 0x55
            elif cmd == Cmd.KBD_DISABLE:
                self._ram[0] |= CTR_KBDDIS
            elif cmd == Cmd.KBD_ENABLE:
                self._ram[0] &= ~CTR_KBDDIS
            elif cmd == Cmd.READ_INPUT_PORT:
                reply = INPUT_PORT
            elif cmd == Cmd.READ_OUTPUT_PORT:
                reply = self._outport_value()
            elif cmd == Cmd.A20_DISABLE:
                effects = self._write_outport(self._outport & ~OUTPORT_A20)
            elif cmd == Cmd.A20_ENABLE:
                effects = self._write_outport(self._outport | OUTPORT_A20)
            elif cmd >= Cmd.PULSE:
                # Only bit 0 (reset) has a consequence; the pulse ends at once, so the port
                # itself is unchanged.
                effects = _Effects(reset=not cmd & OUTPORT_RESET)
            else:
                log.debug("unimplemented i8042 command %#04x ignored", cmd)
            if reply is not None:
                self._ctl_out.append(_Byte(reply))
            self._refill()
            self._update_irq()
        self._run(effects)

    # -- the keyboard ---------------------------------------------------------------------------
    def _kbd_send(self, *values: int) -> None:
        self._kbd_reply.extend(values)
        self._kbd_last_sent = values[-1]

    def _kbd_write(self, value: int) -> None:
        if value == KbdCmd.RESEND:  # repeat the last byte; a pending parameter stays pending
            self._kbd_reply.append(self._kbd_last_sent)
            return
        expect = self._kbd_expect
        # A command code arriving in place of a parameter is taken as a new command.
        if expect is not None and value < KbdCmd.SET_LEDS:
            self._kbd_expect = None
            self._kbd_parameter(expect, value)
            return
        self._kbd_expect = None
        if value in (KbdCmd.SET_LEDS, KbdCmd.SCANCODE_SET, KbdCmd.TYPEMATIC):
            self._kbd_expect = value
            self._kbd_send(KBD_ACK)
        elif value == KbdCmd.ECHO:
            self._kbd_send(KBD_ECHO)
        elif value == KbdCmd.IDENTIFY:
            translated = self._ram[0] & CTR_XLATE
            self._kbd_send(KBD_ACK, 0xAB, ID_TRANSLATED if translated else ID_RAW)
        elif value == KbdCmd.ENABLE:
            self._kbd_scan.clear()
            self._kbd_scanning = True
            self._kbd_send(KBD_ACK)
        elif value in (KbdCmd.DISABLE, KbdCmd.DEFAULTS):
            self._kbd_scan.clear()
            self._kbd_defaults()
            self._kbd_scanning = value == KbdCmd.DEFAULTS
            self._kbd_send(KBD_ACK)
        elif value == KbdCmd.RESET:
            self._kbd_scan.clear()
            self._kbd_reply.clear()
            self._kbd_defaults()
            self._kbd_scanning = True
            self._kbd_send(KBD_ACK, KBD_BAT_OK)
        elif value > KbdCmd.TYPEMATIC:
            self._kbd_send(KBD_ACK)  # 0xF7-0xFD: scan code set 3 key modes, nothing to do
        else:
            self._kbd_send(KBD_RESEND)  # not a command this keyboard knows

    def _kbd_parameter(self, cmd: int, value: int) -> None:
        if cmd == KbdCmd.SET_LEDS:
            self.leds = value & 0x07
            self._kbd_send(KBD_ACK)
        elif cmd == KbdCmd.TYPEMATIC:
            self.typematic = value & 0x7F
            self._kbd_send(KBD_ACK)
        elif value == 0:  # scan code set query
            current = self.scancode_set
            self._kbd_send(KBD_ACK, SET_TRANSLATED[current] if self._ram[0] & CTR_XLATE else current)
        elif value <= 3:
            self.scancode_set = value
            self._kbd_send(KBD_ACK)
        else:
            self._kbd_expect = cmd  # invalid set: ask again
            self._kbd_send(KBD_RESEND)

    # -- internals (lock held) ------------------------------------------------------------------
    def _outport_value(self) -> int:
        value = self._outport & ~(OUTPORT_OBF | OUTPORT_AUXOBF)
        if self._obuf is not None:
            value |= OUTPORT_AUXOBF if self._obuf.aux else OUTPORT_OBF
        return value

    def _write_outport(self, value: int) -> _Effects:
        old, self._outport = self._outport, value
        a20 = bool(value & OUTPORT_A20) if (old ^ value) & OUTPORT_A20 else None
        return _Effects(a20=a20, reset=not value & OUTPORT_RESET)

    def _refill(self) -> None:
        """Load the output buffer once the guest has emptied it."""
        if self._obuf is not None:
            return
        ctr = self._ram[0]
        if self._ctl_out:
            self._obuf = self._ctl_out.popleft()
        elif not ctr & CTR_KBDDIS and (self._kbd_reply or self._kbd_scan):
            source = self._kbd_reply if self._kbd_reply else self._kbd_scan
            self._obuf = _Byte(source.popleft())
        elif not ctr & CTR_AUXDIS and self._aux_out:
            self._obuf = self._aux_out.popleft()

    def _update_irq(self) -> None:
        ob, ctr = self._obuf, self._ram[0]
        irq1 = ob is not None and not ob.aux and bool(ctr & CTR_KBDINT)
        irq12 = ob is not None and ob.aux and bool(ctr & CTR_AUXINT)
        if irq1 != self._irq1_level:
            self._irq1_level = irq1
            self._irq1(irq1)
        if irq12 != self._irq12_level:
            self._irq12_level = irq12
            if self._irq12 is not None:
                self._irq12(irq12)

    def _run(self, effects: _Effects) -> None:
        if effects.a20 is not None:
            self._on_a20(effects.a20)
        if effects.reset:
            self._on_reset()


_DATA_COMMANDS = frozenset({Cmd.WRITE_OUTPUT_PORT, Cmd.WRITE_KBD_BUFFER, Cmd.WRITE_AUX_BUFFER, Cmd.WRITE_AUX})


class _Port:
    """Adapter giving one of the controller's two ports the bus's device interface."""

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._read = read
        self._write = write

    def io_read(self, offset: int, size: int) -> int:
        return self._read()  # byte-wide; the bus fills wider reads from the low byte

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._write(value & 0xFF)


# System Control Port A (0x92).
SYSCTL_FAST_RESET = 0x01
SYSCTL_A20 = 0x02


class SystemControlA:
    """PS/2 System Control Port A at 0x92: bit 1 gates A20, bit 0 going 0->1 resets the CPU.

    As on real chipsets the reset fires on the rising edge of bit 0 (the bit reads back as
    written until the next reset), so read-modify-write code that leaves bit 0 alone does not
    reset the machine twice.
    """

    def __init__(self, on_reset: Callable[[], None], on_a20: Callable[[bool], None]) -> None:
        self._on_reset = on_reset
        self._on_a20 = on_a20
        self._lock = threading.Lock()
        self._value = 0

    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_SYSCTL_A, 1, self, "system control port A")

    def reset(self) -> None:
        with self._lock:
            old, self._value = self._value, 0
        if old & SYSCTL_A20:
            self._on_a20(False)

    @property
    def a20(self) -> bool:
        return bool(self._value & SYSCTL_A20)

    def io_read(self, offset: int, size: int) -> int:
        return self._value

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            old, self._value = self._value, value
        if (old ^ value) & SYSCTL_A20:
            self._on_a20(bool(value & SYSCTL_A20))
        if value & ~old & SYSCTL_FAST_RESET:
            self._on_reset()
