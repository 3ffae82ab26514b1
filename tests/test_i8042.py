"""The 8042 keyboard controller, its keyboard, and port 0x92, driven through the bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu.bus import Bus
from emu.config import BackendName, MachineConfig
from emu.devices.i8042 import I8042, SystemControlA
from emu.machine import Machine

DATA, CMD, SYSCTL = 0x60, 0x64, 0x92
OBF, SYS, CMD_BIT, AUXDATA, TIMEOUT = 0x01, 0x04, 0x08, 0x20, 0x40


class Guest:
    def __init__(self) -> None:
        self.bus = Bus()
        self.irq1: list[bool] = []
        self.irq12: list[bool] = []
        self.a20: list[bool] = []
        self.resets = 0
        self.kbc = I8042(irq1=self.irq1.append, on_reset=self._reset, on_a20=self.a20.append, irq12=self.irq12.append)
        self.kbc.register(self.bus)
        self.sysctl = SystemControlA(on_reset=self._reset, on_a20=self.a20.append)
        self.sysctl.register(self.bus)

    def _reset(self) -> None:
        self.resets += 1

    def inb(self, port: int) -> int:
        return self.bus.pio_read(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.bus.pio_write(port, 1, value)

    def command(self, cmd: int, *params: int, replies: int = 0) -> list[int]:
        """i8042_command() as Linux and SeaBIOS do it: poll the status register."""
        assert self.inb(CMD) & 0x02 == 0  # input buffer empty
        self.outb(CMD, cmd)
        for p in params:
            self.outb(DATA, p)
        return [self.read_data() for _ in range(replies)]

    def kbd(self, *data: int, replies: int) -> list[int]:
        for d in data:
            self.outb(DATA, d)
        return [self.read_data() for _ in range(replies)]

    def read_data(self) -> int:
        assert self.inb(CMD) & OBF, "no byte in the output buffer"
        return self.inb(DATA)

    def flush(self) -> list[int]:
        out = []
        while self.inb(CMD) & OBF:
            out.append(self.inb(DATA))
        return out


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_linux_controller_probe(g: Guest) -> None:
    assert g.inb(CMD) != 0xFF  # a controller is there
    assert g.flush() == []
    assert g.command(0xAA, replies=1) == [0x55]
    assert g.inb(CMD) & SYS  # the self-test sets the system flag
    assert g.command(0xAB, replies=1) == [0x00]  # keyboard interface test
    ctr = g.command(0x20, replies=1)[0]
    assert g.command(0x20, replies=1) == [ctr]  # a stable CTR
    g.command(0x60, (ctr | 0x10) & ~0x01)  # keyboard interface and its interrupt off
    assert g.command(0x20, replies=1) == [(ctr | 0x10) & ~0x01]
    assert g.inb(CMD) & CMD_BIT  # the last write went to the command port
    # AUX bit-assignment test: 0xA7/0xA8 move CTR bit 5.
    g.command(0xA7)
    assert g.command(0x20, replies=1)[0] & 0x20
    g.command(0xA8)
    assert not g.command(0x20, replies=1)[0] & 0x20
    # AUX loopback answers with the byte, flagged as auxiliary data; not a MUX controller.
    g.outb(CMD, 0xD3)
    g.outb(DATA, 0x5A)
    assert g.inb(CMD) & (OBF | AUXDATA) == OBF | AUXDATA
    assert g.inb(DATA) == 0x5A
    assert g.command(0xA9, replies=1) == [0x00]


def test_command_byte_drives_system_flag_and_status(g: Guest) -> None:
    g.command(0x60, 0x45)
    assert g.command(0x20, replies=1) == [0x45]
    assert g.inb(CMD) & SYS
    g.command(0x60, 0x41)
    assert not g.inb(CMD) & SYS
    g.outb(DATA, 0xF4)  # a write to the data port clears the command/data bit
    assert not g.inb(CMD) & CMD_BIT
    assert g.read_data() == 0xFA  # it went to the keyboard, which acknowledged it
    # 0xAD/0xAE flip the keyboard-disable bit.
    g.command(0xAD)
    assert g.command(0x20, replies=1)[0] & 0x10
    g.command(0xAE)
    assert not g.command(0x20, replies=1)[0] & 0x10


def test_keyboard_reset_answers_ack_then_bat_with_irq1(g: Guest) -> None:
    g.command(0x60, 0x01)  # keyboard interrupt on
    g.flush()
    g.irq1.clear()
    g.outb(DATA, 0xFF)
    assert g.irq1 == [True]
    assert g.inb(DATA) == 0xFA
    assert g.irq1 == [True, False, True]  # a new edge for the next byte
    assert g.inb(DATA) == 0xAA
    assert g.irq1 == [True, False, True, False]
    assert not g.inb(CMD) & OBF
    assert g.inb(DATA) == 0xAA  # the output buffer keeps its last byte


def test_no_irq1_when_the_command_byte_disables_it(g: Guest) -> None:
    g.command(0x60, 0x00)
    g.irq1.clear()
    assert g.kbd(0xFF, replies=2) == [0xFA, 0xAA]
    assert g.irq1 == []


def test_keyboard_commands_answer_as_an_at_keyboard(g: Guest) -> None:
    g.command(0x60, 0x00)  # no translation
    assert g.kbd(0xF2, replies=3) == [0xFA, 0xAB, 0x83]
    g.command(0x60, 0x40)  # translation: the ID reaches the CPU as 0x41
    assert g.kbd(0xF2, replies=3) == [0xFA, 0xAB, 0x41]
    assert g.kbd(0xF5, replies=1) == [0xFA]
    assert g.kbd(0xED, 0x07, replies=2) == [0xFA, 0xFA]
    assert g.kbc.leds == 0x07
    assert g.kbd(0xF0, 0x01, replies=2) == [0xFA, 0xFA]
    # A query (set 0) is acknowledged twice, then the set follows.
    assert g.kbd(0xF0, 0x00, replies=3) == [0xFA, 0xFA, 0x43]  # set 1, translated
    g.command(0x60, 0x00)
    assert g.kbd(0xF0, 0x00, replies=3) == [0xFA, 0xFA, 0x01]
    assert g.kbd(0xF0, 0x09, replies=2) == [0xFA, 0xFE]  # no such set: resend
    assert g.kbd(0x02, replies=1) == [0xFA]  # ...and the keyboard still waits for one
    assert g.kbc.scancode_set == 2
    assert g.kbd(0xF3, 0x20, replies=2) == [0xFA, 0xFA]
    assert g.kbd(0xEE, replies=1) == [0xEE]
    assert g.kbd(0xFE, replies=1) == [0xEE]  # resend repeats the last byte
    assert g.kbd(0x12, replies=1) == [0xFE]  # not a command
    assert g.kbd(0xED, 0xF4, replies=2) == [0xFA, 0xFA]  # a command in place of a parameter
    assert g.kbd(0xF4, replies=1) == [0xFA]
    assert g.flush() == []


def test_seabios_keyboard_init(g: Guest) -> None:
    # SeaBIOS masks interrupts and the keyboard in the CTR, then talks to the keyboard anyway:
    # sending it a byte re-enables the interface.
    g.command(0x60, 0x30)
    assert g.kbd(0xFF, replies=2) == [0xFA, 0xAA]
    assert g.kbd(0xF5, replies=1) == [0xFA]
    assert g.kbd(0xF0, 0x02, replies=2) == [0xFA, 0xFA]
    g.command(0x60, 0x61)  # AUX disabled, translation, keyboard interrupt
    assert g.kbd(0xF4, replies=1) == [0xFA]
    assert g.irq1[-1] is False


def test_scancodes_reach_the_guest_and_wait_while_the_interface_is_off(g: Guest) -> None:
    g.command(0x60, 0x01)
    g.flush()
    g.kbc.feed(b"\x1e\x9e")
    assert g.irq1[-1]
    assert g.flush() == [0x1E, 0x9E]
    assert not g.irq1[-1]
    g.command(0xAD)
    g.kbc.feed(b"\x30")
    assert not g.inb(CMD) & OBF
    g.command(0xAE)
    assert g.flush() == [0x30]
    g.kbd(0xF5, replies=1)  # scanning off: keys are not sent
    g.kbc.feed(b"\x31")
    assert g.flush() == []


def test_command_replies_go_ahead_of_pending_scancodes(g: Guest) -> None:
    g.command(0x60, 0x00)
    g.kbc.feed(b"\x1e\x9e\x30")  # the first byte is already in the output buffer
    assert g.kbd(0xEE, replies=2) == [0x1E, 0xEE]
    assert g.flush() == [0x9E, 0x30]


def test_mouse_port_with_nothing_plugged_in(g: Guest) -> None:
    g.command(0x60, 0x02)  # AUX interrupt on
    g.command(0xD4, 0xFF)  # reset the mouse
    assert g.inb(CMD) & (OBF | AUXDATA | TIMEOUT) == OBF | AUXDATA | TIMEOUT
    assert g.irq12 == [True]
    assert g.inb(DATA) == 0xFE
    assert g.irq12 == [True, False]
    assert g.irq1 == []


def test_a20_and_reset_through_the_output_port(g: Guest) -> None:
    assert g.command(0xD0, replies=1)[0] & 0x03 == 0x03  # reset inactive, A20 on
    g.command(0xD1, 0xDD)  # A20 off
    assert g.a20 == [False]
    assert not g.kbc.a20
    assert g.command(0xD0, replies=1)[0] & 0x02 == 0
    g.command(0xD1, 0xDD)  # unchanged: no callback
    g.command(0xD1, 0xDF)
    assert g.a20 == [False, True]
    g.command(0xDD)  # the HP-style A20 commands
    g.command(0xDF)
    assert g.a20 == [False, True, False, True]
    assert g.resets == 0
    g.command(0xD1, 0xDE)  # bit 0 low holds the CPU in reset
    assert g.resets == 1
    g.command(0xFF)  # pulse nothing
    assert g.resets == 1
    g.command(0xFE)  # pulse the reset line: how Linux reboots
    assert g.resets == 2


def test_port_0x92_a20_and_fast_reset(g: Guest) -> None:
    assert g.inb(SYSCTL) == 0x00
    # Linux's enable_a20_fast(): read-modify-write, never setting bit 0.
    g.outb(SYSCTL, (g.inb(SYSCTL) | 0x02) & ~0x01)
    assert g.a20 == [True]
    assert g.inb(SYSCTL) == 0x02
    assert g.sysctl.a20
    g.outb(SYSCTL, 0x00)
    assert g.a20 == [True, False]
    assert g.resets == 0
    g.outb(SYSCTL, 0x01)
    assert g.resets == 1
    assert g.inb(SYSCTL) == 0x01
    g.outb(SYSCTL, 0x03)  # bit 0 already set: no second reset, only A20
    assert g.resets == 1
    assert g.a20 == [True, False, True]
    g.sysctl.reset()
    assert g.inb(SYSCTL) == 0x00
    g.outb(SYSCTL, 0x01)
    assert g.resets == 2


def test_reset_restores_power_on_state(g: Guest) -> None:
    power_on_ctr = g.command(0x20, replies=1)[0]
    g.command(0x60, 0x65)
    g.command(0xD1, 0xDD)
    g.kbd(0xF5, 0xED, replies=1)
    g.kbc.feed(b"\x1e")
    g.kbc.reset()
    assert g.a20 == [False, True]
    assert g.kbc.a20
    assert not g.inb(CMD) & (OBF | SYS)
    assert g.irq1[-1] is False
    assert g.command(0x20, replies=1) == [power_on_ctr]
    assert g.kbd(0xF2, replies=3) == [0xFA, 0xAB, 0x83]  # no parameter pending any more


def test_machine_wires_the_aux_channel_to_irq12(tmp_path: Path) -> None:
    """Linux loops a byte back through the aux channel and waits 250 ms for IRQ 12 to arrive."""
    image = tmp_path / "hlt.img"
    image.write_bytes(b"\xf4")
    with Machine(MachineConfig(backend=BackendName.UNICORN, mem=8 << 20, image=image)) as m:
        m.bus.pio_write(0x64, 1, 0x60)  # write the command byte:
        m.bus.pio_write(0x60, 1, 0x02)  # aux interrupt on, keyboard interrupt off
        m.bus.pio_write(0x64, 1, 0xD3)  # write the aux output buffer (loopback)
        m.bus.pio_write(0x60, 1, 0xA5)
        assert m.irqchip.describe()["slave"]["irr"] & 1 << (12 - 8)
        assert m.bus.pio_read(0x60, 1) == 0xA5
