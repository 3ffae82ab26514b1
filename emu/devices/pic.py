"""Two cascaded Intel 8259A PICs as on a PC/AT, with the PIIX/ICH edge/level control registers.

The master is at 0x20/0x21, the slave at 0xA0/0xA1 with its INT output on the master's IR2, and
ELCR at 0x4D0/0x4D1 selects edge or level triggering per line (IRQ 0, 1, 2, 8 and 13 are always
edge, as on the PIIX). The machine calls `set_irq` for device lines, gets `on_intr` when the INTR
pin to the CPU changes, and runs the INTA cycle with `acknowledge`.

One deliberate difference from the datasheet: an edge-triggered request stays latched in IRR when
the line falls before INTA. A real 8259A wants the line held until the first INTA and otherwise
answers with the default IR7; emu's interrupt sources (the PIT) pulse their line, as QEMU's do, and
rely on the latch. The spurious IR7/IR15 still happens whenever nothing is left to acknowledge: a
level-triggered line dropped, or the request was masked, between INTR and INTA.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emu import layout
from emu.bus import Bus

# ICW1 (A0=0, D4=1).
ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SNGL = 0x02  # single PIC, no ICW3
ICW1_LTIM = 0x08  # level-triggered inputs (the ELCR does this per line on a PC)
ICW1_INIT = 0x10
# ICW4.
ICW4_UPM = 0x01  # 8086 mode (emu always delivers 8086 vectors)
ICW4_AEOI = 0x02
ICW4_MS = 0x04  # buffered mode: master/slave select
ICW4_BUF = 0x08
ICW4_SFNM = 0x10
# OCW2 (A0=0, D4=0, D3=0): R, SL, EOI in bits 7:5, level in bits 2:0.
OCW2_EOI = 0x20
OCW2_SL = 0x40
OCW2_R = 0x80
# OCW3 (A0=0, D4=0, D3=1).
OCW3_RIS = 0x01  # read ISR (with RR)
OCW3_RR = 0x02  # read register command
OCW3_POLL = 0x04
OCW3_SELECT = 0x08
OCW3_SMM = 0x20  # special mask mode (with ESMM)
OCW3_ESMM = 0x40

POLL_INTERRUPT = 0x80  # poll word: I bit, level in bits 2:0

# ELCR bits that are writable on the PIIX: IRQ 0 (timer), 1 (keyboard), 2 (cascade), 8 (RTC) and
# 13 (FPU error) are edge-only.
ELCR_MASK_MASTER = 0xF8
ELCR_MASK_SLAVE = 0xDE


@dataclass
class _Chip:
    """One 8259A. Priorities are ranks 0 (highest) to 7 counted from `top`, the level with the
    highest priority (0 after ICW1; rotation moves it)."""

    master: bool
    elcr_mask: int
    irr: int = 0
    isr: int = 0
    imr: int = 0xFF
    lines: int = 0  # input pin levels, kept across reinitialisation: they are the devices' wires
    elcr: int = 0
    base: int = 0  # ICW2 & 0xF8
    init_step: int = 0  # 0: operational; 2, 3, 4: the next ICW expected
    icw1: int = 0
    icw3: int = 0  # master: bit per IR with a slave; slave: its cascade ID
    icw4: int = 0
    rotate_aeoi: bool = False
    read_isr: bool = False
    poll: bool = False
    special_mask: bool = False
    top: int = 0

    # -- power-on and ICW1 ----------------------------------------------------------------------
    def power_on(self) -> None:
        """The datasheet leaves the power-on state undefined. emu takes what ICW1 leaves (IR7
        lowest, IRR selected for reading, no special modes), vector base 0 and, as Bochs, every
        line masked, so nothing reaches the CPU before firmware programs the chip."""
        self.elcr = 0
        self.init_icw1(0)
        self.init_step = 0
        self.base = 0
        self.imr = 0xFF

    def init_icw1(self, value: int) -> None:
        # 8259A datasheet, "Initialization Command Words": ICW1 resets the edge sense circuit (a
        # line must go low-to-high to request again), clears IMR, gives IR7 the lowest priority,
        # clears special mask mode, selects IRR for reading and, without IC4, zeroes ICW4.
        self.icw1 = value
        self.init_step = 2
        self.imr = 0
        self.isr = 0
        self.irr = self.lines & self.level_mask  # edge requests go; a held line needs a new edge
        self.top = 0
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.rotate_aeoi = False
        self.icw3 = 0
        self.icw4 = 0

    # -- modes ----------------------------------------------------------------------------------
    @property
    def level_mask(self) -> int:
        return 0xFF if self.icw1 & ICW1_LTIM else self.elcr

    @property
    def auto_eoi(self) -> bool:
        return bool(self.icw4 & ICW4_AEOI)

    @property
    def sfnm(self) -> bool:
        return bool(self.icw4 & ICW4_SFNM)

    @property
    def single(self) -> bool:
        return bool(self.icw1 & ICW1_SNGL)

    # -- inputs ---------------------------------------------------------------------------------
    def set_line(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if level:
            if self.level_mask & bit or not self.lines & bit:
                self.irr |= bit  # held level, or a rising edge
            self.lines |= bit
        else:
            self.lines &= ~bit
            if self.level_mask & bit:
                self.irr &= ~bit  # a level request exists only while the line is held

    # -- priority resolution --------------------------------------------------------------------
    def rank(self, level: int) -> int:
        return (level - self.top) & 7

    def highest(self, mask: int) -> int | None:
        for i in range(8):
            level = (self.top + i) & 7
            if mask >> level & 1:
                return level
        return None

    def pending(self) -> int | None:
        """The level the chip asks service for (what INT reflects), or None."""
        request = self.highest(self.irr & ~self.imr)
        if request is None:
            return None
        # Special mask mode: a masked in-service level no longer blocks anything.
        busy = self.isr & ~self.imr if self.special_mask else self.isr
        current = self.highest(busy)
        if current is None or self.rank(request) < self.rank(current):
            return request
        # Special fully nested mode (master): a slave input in service accepts a new request from
        # the same slave, which the slave only raises for a higher priority than its own.
        if self.master and self.sfnm and request == current and self.icw3 >> request & 1:
            return request
        return None

    def ack(self, level: int) -> None:
        """The first INTA pulse: the request moves from IRR to ISR (not with auto-EOI, where the
        ISR bit is reset at the end of the sequence, rotating priorities if asked to)."""
        bit = 1 << level
        self.irr &= ~bit
        self.irr |= self.lines & self.level_mask & bit  # a held level request stays in IRR
        if self.auto_eoi:
            if self.rotate_aeoi:
                self.top = (level + 1) & 7
        else:
            self.isr |= bit

    # -- registers ------------------------------------------------------------------------------
    def write_command(self, value: int) -> None:
        """A0=0 write: ICW1, OCW2 or OCW3."""
        if value & ICW1_INIT:
            self.init_icw1(value)
        elif value & OCW3_SELECT:
            if value & OCW3_RR:
                self.read_isr = bool(value & OCW3_RIS)
            if value & OCW3_ESMM:
                self.special_mask = bool(value & OCW3_SMM)
            self.poll = bool(value & OCW3_POLL)
        else:
            self.write_ocw2(value)

    def write_ocw2(self, value: int) -> None:
        level = value & 7
        op = value & (OCW2_R | OCW2_SL | OCW2_EOI)
        if op == OCW2_R:  # rotate in automatic EOI mode (set)
            self.rotate_aeoi = True
        elif op == 0:  # rotate in automatic EOI mode (clear)
            self.rotate_aeoi = False
        elif op == OCW2_R | OCW2_SL:  # set priority: `level` becomes the lowest
            self.top = (level + 1) & 7
        elif op & OCW2_EOI:
            if not op & OCW2_SL:
                # Non-specific EOI: the highest-priority in-service level. In special mask mode
                # the datasheet has masked ISR bits left alone.
                busy = self.isr & ~self.imr if self.special_mask else self.isr
                found = self.highest(busy)
                if found is None:
                    return
                level = found
            self.isr &= ~(1 << level)
            if op & OCW2_R:  # rotate on EOI: the level just served becomes the lowest
                self.top = (level + 1) & 7
        # OCW2_SL alone (0x40) is the no-operation command.

    def write_data(self, value: int) -> None:
        step = self.init_step
        if step == 2:
            self.base = value & 0xF8  # 8086 mode: T7-T3, the level fills bits 2:0
            if not self.single:
                self.init_step = 3
            elif self.icw1 & ICW1_IC4:
                self.init_step = 4
            else:
                self.init_step = 0
        elif step == 3:
            self.icw3 = value
            self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif step == 4:
            self.icw4 = value & 0x1F
            self.init_step = 0
        else:
            self.imr = value  # OCW1

    def read_command(self) -> int:
        if self.poll:
            # Poll command: this read is the interrupt acknowledge; the word has I=1 and the
            # level when there was a request, 0 otherwise.
            self.poll = False
            level = self.pending()
            if level is None:
                return 0
            self.ack(level)
            return POLL_INTERRUPT | level
        return self.isr if self.read_isr else self.irr

    def write_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        levels = self.level_mask
        # A line switched to level mode requests exactly while it is high.
        self.irr = (self.irr & ~levels) | (self.lines & levels)

    def describe(self) -> dict[str, Any]:
        return {
            "imr": self.imr,
            "irr": self.irr,
            "isr": self.isr,
            "elcr": self.elcr,
            "lines": self.lines,
            "vector_base": self.base,
            "initialized": self.init_step == 0,
            "init_step": self.init_step,
            "single": self.single,
            "level_triggered": bool(self.icw1 & ICW1_LTIM),
            "cascade": self.icw3,
            "x86_mode": bool(self.icw4 & ICW4_UPM),
            "auto_eoi": self.auto_eoi,
            "rotate_on_auto_eoi": self.rotate_aeoi,
            "special_fully_nested": self.sfnm,
            "special_mask": self.special_mask,
            "lowest_priority": (self.top - 1) & 7,
            "read_register": "isr" if self.read_isr else "irr",
            "poll": self.poll,
        }


class PicPair:
    """Master and slave 8259A with ELCR. Thread-safe: device lines may change from any thread.

    `on_intr(level)` is called, with the lock held, whenever the INTR output changes.
    """

    def __init__(self, on_intr: Callable[[bool], None] | None = None) -> None:
        self.on_intr = on_intr
        self._lock = threading.RLock()
        self._master = _Chip(master=True, elcr_mask=ELCR_MASK_MASTER)
        self._slave = _Chip(master=False, elcr_mask=ELCR_MASK_SLAVE)
        self._intr = False
        self._master.power_on()
        self._slave.power_on()

    # -- wiring ---------------------------------------------------------------------------------
    def register(self, bus: Bus) -> None:
        bus.register_pio(layout.PORT_PIC_MASTER, 2, _ChipPorts(self, self._master), "8259A master PIC")
        bus.register_pio(layout.PORT_PIC_SLAVE, 2, _ChipPorts(self, self._slave), "8259A slave PIC")
        bus.register_pio(layout.PORT_ELCR, 2, _ElcrPorts(self), "ELCR")

    def reset(self) -> None:
        with self._lock:
            self._master.power_on()
            self._slave.power_on()
            self._update()

    # -- machine side ---------------------------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        """Drive ISA IRQ `line` (0-15). IRQ 2 is the cascade on an AT; a card on the bus's IRQ2
        pin reaches the slave's IR1 (IRQ 9), as on a PC."""
        if not 0 <= line < 16:
            raise ValueError(f"IRQ {line} is not a PIC line")
        if line == layout.PIC_CASCADE_IRQ:
            line = 9
        with self._lock:
            if line < 8:
                self._master.set_line(line, level)
            else:
                self._slave.set_line(line - 8, level)
            self._update()

    @property
    def intr(self) -> bool:
        return self._intr

    def acknowledge(self) -> int:
        """The INTA cycle: the vector for the CPU, with IRR/ISR updated on both chips. With no
        request left the master answers IR7 (spurious, no ISR bit); a master IR2 whose slave has
        nothing answers the slave's IR7 (IRQ 15) and leaves the master's IR2 in service."""
        with self._lock:
            master, slave = self._master, self._slave
            level = master.pending()
            if level is None:
                vector = master.base | 7
            else:
                master.ack(level)
                if level == layout.PIC_CASCADE_IRQ and not master.single and master.icw3 >> level & 1:
                    # The slave's INT is taken down during INTA; if it still has a request
                    # afterwards, that is a fresh edge on IR2.
                    master.set_line(level, False)
                    slave_level = slave.pending()
                    if slave_level is None:
                        vector = slave.base | 7
                    else:
                        slave.ack(slave_level)
                        vector = slave.base | slave_level
                else:
                    vector = master.base | level
            self._update()
            return vector

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"master": self._master.describe(), "slave": self._slave.describe(), "intr": self._intr}

    # -- internals ------------------------------------------------------------------------------
    def _update(self) -> None:
        """Propagate the slave's INT to master IR2 and the master's INT to the CPU (lock held)."""
        self._master.set_line(layout.PIC_CASCADE_IRQ, self._slave.pending() is not None)
        intr = self._master.pending() is not None
        if intr != self._intr:
            self._intr = intr
            if self.on_intr is not None:
                self.on_intr(intr)

    def _read(self, chip: _Chip, offset: int) -> int:
        with self._lock:
            if offset == 0:
                polled = chip.poll
                value = chip.read_command()
                if polled:
                    self._update()  # the read was an acknowledge
                return value
            return chip.imr

    def _write(self, chip: _Chip, offset: int, value: int) -> None:
        with self._lock:
            if offset == 0:
                chip.write_command(value)
            else:
                chip.write_data(value)
            self._update()

    def _read_elcr(self, offset: int) -> int:
        with self._lock:
            return (self._master if offset == 0 else self._slave).elcr

    def _write_elcr(self, offset: int, value: int) -> None:
        with self._lock:
            (self._master if offset == 0 else self._slave).write_elcr(value)
            self._update()


class _ChipPorts:
    """The two ports of one chip (byte-wide; wider accesses see the low byte)."""

    def __init__(self, pair: PicPair, chip: _Chip) -> None:
        self._pair = pair
        self._chip = chip

    def io_read(self, offset: int, size: int) -> int:
        return self._pair._read(self._chip, offset)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self._pair._write(self._chip, offset, value & 0xFF)


class _ElcrPorts:
    def __init__(self, pair: PicPair) -> None:
        self._pair = pair

    def io_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            if offset + i < 2:
                value |= self._pair._read_elcr(offset + i) << (8 * i)
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            if offset + i < 2:
                self._pair._write_elcr(offset + i, (value >> (8 * i)) & 0xFF)
