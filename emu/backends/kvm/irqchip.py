"""KVM's in-kernel interrupt controllers (8259 pair, IOAPIC, a local APIC per vCPU) as the
machine's IrqChip (emu/platform.py): lines through KVM_IRQ_LINE, views through KVM_GET_IRQCHIP."""

from __future__ import annotations

from typing import Any

from emu.backends.kvm import api
from emu.backends.kvm.api import ffi, ioctl

# struct kvm_pic_state, in order (KVM_GET_IRQCHIP chips 0 and 1).
_PIC_FIELDS = ("last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
               "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode",
               "init4", "elcr", "elcr_mask")  # fmt: skip
_CHIPS = (0, 1, 2)  # the master and slave 8259 and the IOAPIC


class KvmIrqChip:
    name = "KVM in-kernel irqchip"
    local_apic = True

    def __init__(self, vm_fd: int) -> None:
        self._vm_fd = vm_fd
        ioctl(vm_fd, api.KVM_CREATE_IRQCHIP, 0, name="KVM_CREATE_IRQCHIP")
        self._power_on: list[Any] = []

    def save_power_on(self) -> None:
        """Remember the chips as they are now (after set-up) for `reset`."""
        self._power_on = [self._get(chip_id) for chip_id in _CHIPS]

    def _get(self, chip_id: int) -> Any:
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl(self._vm_fd, api.KVM_GET_IRQCHIP, chip, name="KVM_GET_IRQCHIP")
        return chip

    def set_irq(self, gsi: int, level: bool) -> None:
        irq = ffi.new("struct kvm_irq_level *")
        irq.irq, irq.level = gsi, int(bool(level))
        ioctl(self._vm_fd, api.KVM_IRQ_LINE, irq, name="KVM_IRQ_LINE")

    def interrupt_ready(self) -> bool:
        return True  # KVM wakes a halted vCPU itself, inside KVM_RUN

    def reset(self) -> None:
        for chip in self._power_on:
            ioctl(self._vm_fd, api.KVM_SET_IRQCHIP, chip, name="KVM_SET_IRQCHIP")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": "KVM in-kernel PIC (KVM_GET_IRQCHIP)"}
        for chip_id, name in ((0, "master"), (1, "slave")):
            raw = bytes(ffi.buffer(self._get(chip_id).chip))[: len(_PIC_FIELDS)]
            out[name] = dict(zip(_PIC_FIELDS, raw, strict=True))
        return out
