"""The 8259A pair, driven through the bus the way Linux and a PC BIOS program it.

Expected values come from the Intel 8259A datasheet (section in brackets) and the PIIX ELCR.
"""

from __future__ import annotations

import pytest

from emu.bus import Bus
from emu.devices.pic import PicPair

MASTER_CMD, MASTER_DATA = 0x20, 0x21
SLAVE_CMD, SLAVE_DATA = 0xA0, 0xA1
ELCR0, ELCR1 = 0x4D0, 0x4D1
READ_IRR, READ_ISR = 0x0A, 0x0B  # OCW3
POLL = 0x0C
EOI = 0x20  # OCW2 non-specific EOI
SPECIFIC_EOI = 0x60


class Guest:
    def __init__(self) -> None:
        self.bus = Bus()
        self.events: list[bool] = []
        self.pic = PicPair(on_intr=self.events.append)
        self.pic.register(self.bus)

    def outb(self, port: int, value: int) -> None:
        self.bus.pio_write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.bus.pio_read(port, 1)

    def init(self, master_base: int, slave_base: int, master_icw4: int = 0x01, slave_icw4: int = 0x01) -> None:
        # arch/x86/kernel/i8259.c init_8259A(): mask all, ICW1 0x11 (edge, cascade, ICW4 needed),
        # ICW2 vector base, ICW3 (master: slave on IR2; slave: ID 2), ICW4 8086 mode.
        self.outb(MASTER_DATA, 0xFF)
        self.outb(SLAVE_DATA, 0xFF)
        self.outb(MASTER_CMD, 0x11)
        self.outb(MASTER_DATA, master_base)
        self.outb(MASTER_DATA, 0x04)
        self.outb(MASTER_DATA, master_icw4)
        self.outb(SLAVE_CMD, 0x11)
        self.outb(SLAVE_DATA, slave_base)
        self.outb(SLAVE_DATA, 0x02)
        self.outb(SLAVE_DATA, slave_icw4)

    def linux(self, **kw: int) -> None:
        self.init(0x30, 0x38, **kw)

    def unmask(self, *irqs: int) -> None:
        master, slave = 0xFF, 0xFF
        for irq in irqs:
            if irq < 8:
                master &= ~(1 << irq)
            else:
                slave &= ~(1 << (irq - 8))
                master &= ~(1 << 2)  # the cascade input
        self.outb(MASTER_DATA, master)
        self.outb(SLAVE_DATA, slave)

    def pulse(self, irq: int) -> None:
        self.pic.set_irq(irq, True)
        self.pic.set_irq(irq, False)

    def reg(self, cmd_port: int, ocw3: int) -> int:
        self.outb(cmd_port, ocw3)
        return self.inb(cmd_port)


@pytest.fixture
def g() -> Guest:
    return Guest()


def test_power_on_everything_masked(g: Guest) -> None:
    # The datasheet leaves power-on undefined; emu masks every line (as Bochs) until programmed.
    assert g.inb(MASTER_DATA) == 0xFF
    assert g.inb(SLAVE_DATA) == 0xFF
    assert g.inb(ELCR0) == 0 and g.inb(ELCR1) == 0
    g.pic.set_irq(0, True)
    assert not g.pic.intr and g.events == []
    assert g.inb(MASTER_CMD) == 0x01  # but the request is in IRR (IRR selected for reading)


def test_icw1_clears_imr_and_sequence_ends_with_icw4(g: Guest) -> None:
    g.linux()
    # [Initialization Command Words] ICW1 clears the IMR; ICW2-4 go to A0=1 and are not the IMR.
    assert g.inb(MASTER_DATA) == 0x00
    assert g.inb(SLAVE_DATA) == 0x00
    g.outb(MASTER_DATA, 0xFB)  # after ICW4, an A0=1 write is OCW1
    assert g.inb(MASTER_DATA) == 0xFB
    d = g.pic.describe()
    assert d["master"]["vector_base"] == 0x30 and d["slave"]["vector_base"] == 0x38
    assert d["master"]["initialized"] and d["slave"]["initialized"]
    assert d["master"]["cascade"] == 0x04 and d["slave"]["cascade"] == 0x02
    assert d["master"]["x86_mode"] and not d["master"]["auto_eoi"]


def test_edge_request_ack_and_eoi(g: Guest) -> None:
    g.linux()
    g.unmask(0)
    g.pulse(0)  # a rising edge latches IR0 (emu keeps the latch when the line falls again)
    assert g.pic.intr and g.events == [True]
    assert g.reg(MASTER_CMD, READ_IRR) == 0x01
    assert g.pic.acknowledge() == 0x30
    assert g.events == [True, False]
    # [Interrupt Sequence] INTA sets the ISR bit and resets the IRR bit.
    assert g.reg(MASTER_CMD, READ_ISR) == 0x01
    assert g.reg(MASTER_CMD, READ_IRR) == 0x00
    # The same level while in service is held off by the fully nested priority.
    g.pulse(0)
    assert not g.pic.intr
    g.outb(MASTER_CMD, EOI)
    assert g.pic.intr
    assert g.pic.acknowledge() == 0x30


def test_read_register_selection_persists(g: Guest) -> None:
    g.linux()
    g.unmask(1)
    g.pulse(1)
    g.pic.acknowledge()
    g.pulse(5)  # masked: stays in IRR
    g.outb(MASTER_CMD, READ_ISR)
    assert [g.inb(MASTER_CMD) for _ in range(3)] == [0x02] * 3  # RR/RIS stay until changed
    g.outb(MASTER_CMD, 0x08)  # OCW3 with RR=0: no change of selection
    assert g.inb(MASTER_CMD) == 0x02
    g.outb(MASTER_CMD, READ_IRR)
    assert g.inb(MASTER_CMD) == 0x20
    assert g.inb(MASTER_DATA) == 0xFD  # A0=1 reads the IMR whatever OCW3 selected


def test_fully_nested_priorities(g: Guest) -> None:
    g.linux()
    g.unmask(0, 1, 3)
    g.pulse(3)
    g.pulse(1)
    assert g.pic.acknowledge() == 0x31  # IR1 before IR3: IR0 highest, IR7 lowest
    assert not g.pic.intr  # IR3 is lower than IR1 in service
    g.pulse(0)
    assert g.pic.intr  # IR0 is higher: it nests
    assert g.pic.acknowledge() == 0x30
    assert g.reg(MASTER_CMD, READ_ISR) == 0x03
    g.outb(MASTER_CMD, EOI)  # non-specific EOI resets the highest ISR bit: IR0
    assert g.reg(MASTER_CMD, READ_ISR) == 0x02
    assert not g.pic.intr
    g.outb(MASTER_CMD, EOI)
    assert g.pic.acknowledge() == 0x33


def test_mask_holds_request_in_irr(g: Guest) -> None:
    g.linux()
    g.unmask()
    g.pulse(4)
    assert not g.pic.intr
    assert g.reg(MASTER_CMD, READ_IRR) == 0x10
    g.outb(MASTER_DATA, 0xEF)
    assert g.pic.intr
    assert g.pic.acknowledge() == 0x34


def test_spurious_irq7_when_request_masked_before_inta(g: Guest) -> None:
    g.linux()
    g.unmask(4)
    g.pulse(4)
    assert g.pic.intr
    g.outb(MASTER_DATA, 0xFF)  # the CPU took INTR with the mask race lost
    assert not g.pic.intr
    # [Interrupt Sequence] no request at INTA: the 8259A answers IR7 and sets no ISR bit.
    assert g.pic.acknowledge() == 0x37
    assert g.reg(MASTER_CMD, READ_ISR) == 0x00


def test_level_line_dropped_before_inta_is_spurious(g: Guest) -> None:
    g.linux()
    g.outb(ELCR0, 0x20)  # IRQ 5 level-triggered
    g.unmask(5)
    g.pic.set_irq(5, True)
    assert g.pic.intr
    g.pic.set_irq(5, False)
    assert not g.pic.intr
    assert g.pic.acknowledge() == 0x37
    assert g.reg(MASTER_CMD, READ_ISR) == 0x00


def test_level_line_held_requests_again_after_eoi(g: Guest) -> None:
    g.linux()
    g.outb(ELCR0, 0x20)
    g.unmask(5)
    g.pic.set_irq(5, True)
    assert g.pic.acknowledge() == 0x35
    assert not g.pic.intr  # in service
    g.outb(MASTER_CMD, EOI)
    assert g.pic.intr  # still held: a level request again
    g.pic.set_irq(5, False)
    assert not g.pic.intr


def test_elcr_writable_bits(g: Guest) -> None:
    # PIIX: IRQ 0, 1, 2, 8 and 13 are edge-only.
    g.outb(ELCR0, 0xFF)
    g.outb(ELCR1, 0xFF)
    assert g.inb(ELCR0) == 0xF8
    assert g.inb(ELCR1) == 0xDE
    assert g.bus.pio_read(ELCR0, 2) == 0xDEF8


def test_slave_interrupt_through_cascade_and_linux_eoi(g: Guest) -> None:
    g.linux()
    g.unmask(8)
    g.pic.set_irq(8, True)
    assert g.pic.intr
    assert g.pic.acknowledge() == 0x38
    assert g.reg(MASTER_CMD, READ_ISR) == 0x04  # the master's IR2 is in service
    assert g.reg(SLAVE_CMD, READ_ISR) == 0x01
    # Linux's mask_and_ack_8259A: specific EOI to the slave, then to the master's IR2.
    g.outb(SLAVE_CMD, SPECIFIC_EOI | 0)
    g.outb(MASTER_CMD, SPECIFIC_EOI | 2)
    assert g.reg(MASTER_CMD, READ_ISR) == 0 and g.reg(SLAVE_CMD, READ_ISR) == 0
    g.pic.set_irq(8, False)
    g.pic.set_irq(8, True)
    assert g.pic.acknowledge() == 0x38


def test_bios_vectors(g: Guest) -> None:
    g.init(0x08, 0x70)
    g.unmask(1, 14)
    g.pulse(14)
    g.pulse(1)
    assert g.pic.acknowledge() == 0x09  # IRQ 1: IR1 of the master outranks IR2 (the slave)
    g.outb(MASTER_CMD, EOI)
    assert g.pic.acknowledge() == 0x76  # IRQ 14


def test_slave_line_dropped_gives_spurious_irq15(g: Guest) -> None:
    g.linux()
    g.outb(ELCR1, 0x04)  # IRQ 10 level
    g.unmask(10)
    g.pic.set_irq(10, True)
    assert g.pic.intr
    g.pic.set_irq(10, False)
    # The master latched the slave's INT edge on IR2; the slave has nothing: its IR7 (IRQ 15),
    # while the master's IR2 stays in service (hence Linux's EOI to the master for it).
    assert g.pic.acknowledge() == 0x3F
    assert g.reg(SLAVE_CMD, READ_ISR) == 0x00
    assert g.reg(MASTER_CMD, READ_ISR) == 0x04


def test_two_slave_requests_both_delivered_with_auto_eoi(g: Guest) -> None:
    g.linux(slave_icw4=0x03, master_icw4=0x03)
    g.unmask(9, 12)
    g.pulse(12)
    g.pulse(9)
    assert g.pic.acknowledge() == 0x39
    assert g.pic.intr  # the slave still requests IR4: INT comes back after the INTA cycle
    assert g.pic.acknowledge() == 0x3C


def test_auto_eoi_leaves_isr_clear(g: Guest) -> None:
    g.linux(master_icw4=0x03)
    g.unmask(0)
    g.pulse(0)
    assert g.pic.acknowledge() == 0x30
    # [AEOI] the ISR bit is reset at the end of the INTA sequence.
    assert g.reg(MASTER_CMD, READ_ISR) == 0
    g.pulse(0)
    assert g.pic.intr


def test_set_priority_and_rotation(g: Guest) -> None:
    g.linux()
    g.unmask(0, 1, 5)
    g.outb(MASTER_CMD, 0xC0 | 3)  # OCW2 set priority: IR3 lowest, IR4 highest
    g.pulse(1)
    g.pulse(5)
    assert g.pic.acknowledge() == 0x35
    assert g.pic.describe()["master"]["lowest_priority"] == 3
    g.outb(MASTER_CMD, 0xC0 | 7)  # back to IR0 highest
    g.outb(MASTER_CMD, 0xE0 | 5)  # rotate on specific EOI 5: IR5 lowest, IR6 highest
    assert g.pic.describe()["master"]["lowest_priority"] == 5
    assert g.pic.acknowledge() == 0x31
    # Rotate on non-specific EOI: the level served (IR1) becomes the lowest.
    g.outb(MASTER_CMD, 0xA0)
    assert g.pic.describe()["master"]["lowest_priority"] == 1
    g.pulse(0)
    g.pulse(1)
    assert g.pic.acknowledge() == 0x30  # IR2 highest now; IR0 ranks above IR1


def test_rotate_in_auto_eoi_mode(g: Guest) -> None:
    g.linux(master_icw4=0x03)
    g.outb(MASTER_CMD, 0x80)  # OCW2: rotate in automatic EOI mode (set)
    g.unmask(0, 1)
    g.pulse(0)
    assert g.pic.acknowledge() == 0x30
    assert g.pic.describe()["master"]["lowest_priority"] == 0
    g.pulse(0)
    g.pulse(1)
    assert g.pic.acknowledge() == 0x31


def test_poll_command(g: Guest) -> None:
    g.linux()
    g.unmask(6)
    g.outb(MASTER_CMD, POLL)
    assert g.inb(MASTER_CMD) == 0x00  # I=0: nothing requesting
    g.pulse(6)
    g.outb(MASTER_CMD, POLL)
    # [Poll Command] the read is the acknowledge: I=1, W2-W0 = 6, ISR bit set.
    assert g.inb(MASTER_CMD) == 0x86
    assert g.reg(MASTER_CMD, READ_ISR) == 0x40
    assert not g.pic.intr
    assert g.inb(MASTER_CMD) == 0x40  # poll is one-shot: back to the selected register


def test_special_mask_mode(g: Guest) -> None:
    g.linux()
    g.unmask(3, 5)
    g.pulse(3)
    assert g.pic.acknowledge() == 0x33
    g.pulse(5)
    assert not g.pic.intr  # IR5 is below IR3 in service
    # [Special Mask Mode] mask IR3 and set SMM: every other unmasked level is enabled.
    g.outb(MASTER_DATA, 0xFF & ~(1 << 5))
    g.outb(MASTER_CMD, 0x68)
    assert g.pic.intr
    assert g.pic.acknowledge() == 0x35
    assert g.reg(MASTER_CMD, READ_ISR) == 0x28
    # A non-specific EOI leaves ISR bits masked in SMM alone: IR5 goes, IR3 stays.
    g.outb(MASTER_CMD, EOI)
    assert g.reg(MASTER_CMD, READ_ISR) == 0x08
    g.outb(MASTER_CMD, 0x48)  # reset SMM
    assert g.pic.describe()["master"]["special_mask"] is False
    g.outb(MASTER_CMD, SPECIFIC_EOI | 3)
    assert g.reg(MASTER_CMD, READ_ISR) == 0


@pytest.mark.parametrize("sfnm", [False, True])
def test_special_fully_nested_mode(g: Guest, sfnm: bool) -> None:
    g.linux(master_icw4=0x11 if sfnm else 0x01)
    g.unmask(9, 12)
    g.pulse(12)
    assert g.pic.acknowledge() == 0x3C
    g.pulse(9)  # higher priority than IRQ 12, on the same slave
    # [Special Fully Nested Mode] only with SFNM does the master take it while IR2 is in service.
    assert g.pic.intr is sfnm
    if sfnm:
        assert g.pic.acknowledge() == 0x39
        assert g.reg(SLAVE_CMD, READ_ISR) == 0x12


def test_sfnm_still_blocks_lower_master_levels(g: Guest) -> None:
    g.linux(master_icw4=0x11)
    g.unmask(3, 12)
    g.pulse(12)
    assert g.pic.acknowledge() == 0x3C
    g.pulse(3)
    assert not g.pic.intr  # IR3 ranks below IR2 in service


def test_icw1_resets_edge_sense(g: Guest) -> None:
    g.pic.set_irq(4, True)
    g.linux()
    g.unmask(4)
    # [ICW1] after initialisation an input must make a low-to-high transition to request.
    assert not g.pic.intr
    g.pic.set_irq(4, False)
    assert not g.pic.intr
    g.pic.set_irq(4, True)
    assert g.pic.intr


def test_single_mode_without_icw4(g: Guest) -> None:
    g.outb(MASTER_CMD, 0x12)  # ICW1: single, no ICW4 (edge)
    g.outb(MASTER_DATA, 0x40)  # ICW2; no ICW3 (single) nor ICW4 (IC4=0)
    g.outb(MASTER_DATA, 0xFB)  # so this is OCW1
    assert g.inb(MASTER_DATA) == 0xFB
    g.outb(SLAVE_CMD, 0x11)
    g.outb(SLAVE_DATA, 0x70)
    g.outb(SLAVE_DATA, 0x02)
    g.outb(SLAVE_DATA, 0x01)
    g.outb(SLAVE_DATA, 0xFD)
    g.pulse(9)  # the slave's INT reaches IR2, but in single mode IR2 is an ordinary input
    assert g.pic.acknowledge() == 0x42


def test_irq2_is_redirected_to_irq9(g: Guest) -> None:
    g.linux()
    g.unmask(9)
    g.pulse(2)
    assert g.pic.acknowledge() == 0x39


def test_intr_callback_only_on_change(g: Guest) -> None:
    g.linux()
    g.unmask(0, 1)
    g.pulse(1)
    g.pulse(0)
    assert g.events == [True]
    assert g.pic.acknowledge() == 0x30
    assert g.events == [True, False]  # IR1 still requests, but below IR0 in service
    g.outb(MASTER_CMD, EOI)
    assert g.events == [True, False, True]
    g.pic.acknowledge()
    assert g.events == [True, False, True, False]


def test_reset_returns_to_power_on(g: Guest) -> None:
    g.linux()
    g.unmask(0)
    g.pulse(0)
    g.pic.reset()
    assert not g.pic.intr
    assert g.inb(MASTER_DATA) == 0xFF
    assert g.pic.describe()["master"]["vector_base"] == 0
    with pytest.raises(ValueError):
        g.pic.set_irq(16, True)
