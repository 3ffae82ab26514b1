"""One KVM vCPU's fd and kvm_run page, and the dispatch of its port and MMIO exits to the Bus."""

from __future__ import annotations

import mmap
import struct
from typing import Any

from emu.backends.base import Exit, ExitKind
from emu.backends.kvm import api
from emu.backends.kvm.api import ffi, ioctl, libc
from emu.bus import Bus
from emu.cpu import x86

_PIO_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
ZERO = ffi.cast("unsigned long", 0)
# A vCPU in these states waits for INIT or STARTUP, which only another CPU can send.
WAIT_FOR_SIPI = (api.KVM_MP_STATE_UNINITIALIZED, api.KVM_MP_STATE_INIT_RECEIVED)
IO_EXITS = (api.KVM_EXIT_IO, api.KVM_EXIT_MMIO)

# kvm_run offsets read on every exit (a memoryview on the mapping is cheaper than cffi there).
_RUN_IO = ffi.offsetof("struct kvm_run", "io")
_RUN_MMIO = ffi.offsetof("struct kvm_run", "mmio")
_IO_LAYOUT = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO_LAYOUT = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write


class KvmVcpu:
    """One vCPU's fd (owned by _Handles) and its mmapped kvm_run page."""

    def __init__(self, index: int, fd: int, mmap_size: int) -> None:
        self.index = index
        self.fd = fd
        self.run_map = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_view = memoryview(self.run_map)
        self.run: Any = ffi.from_buffer("struct kvm_run *", self.run_map)

    def release(self) -> None:
        ffi.release(self.run)
        self.run_view.release()
        self.run_map.close()

    def get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, api.KVM_GET_REGS, regs, name="KVM_GET_REGS")
        return regs

    def get_sregs(self) -> Any:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, api.KVM_GET_SREGS, sregs, name="KVM_GET_SREGS")
        return sregs

    def mp_state(self) -> int:
        mp = ffi.new("struct kvm_mp_state *")
        ioctl(self.fd, api.KVM_GET_MP_STATE, mp, name="KVM_GET_MP_STATE")
        return int(mp.mp_state)

    def set_mp_state(self, state: int) -> None:
        mp = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        ioctl(self.fd, api.KVM_SET_MP_STATE, mp, name="KVM_SET_MP_STATE")

    def get_lapic(self) -> Any:
        lapic = ffi.new("struct kvm_lapic_state *")
        ioctl(self.fd, api.KVM_GET_LAPIC, lapic, name="KVM_GET_LAPIC")
        return lapic

    def halted_for_good(self) -> bool:
        """In hlt with IF=0, or waiting for INIT/STARTUP: only another CPU could wake it.
        (Not while it is inside KVM_RUN: the ioctls would wait for it.)"""
        mp = self.mp_state()
        if mp in WAIT_FOR_SIPI:
            return True
        return mp == api.KVM_MP_STATE_HALTED and not self.get_regs().rflags & x86.FLAG_IF

    def finish_io(self) -> None:
        """Finish the guest instruction behind the last I/O exit without the Bus: reads return
        all-ones, writes are dropped. KVM completes an exit's instruction only in the next
        KVM_RUN (here with immediate_exit set, so it returns EINTR once that is done; a string
        instruction may exit again first). The caller sets immediate_exit again afterwards."""
        run = self.run
        while True:
            if run.exit_reason == api.KVM_EXIT_IO and run.io.direction == api.KVM_EXIT_IO_IN:
                n = run.io.size * run.io.count
                off = run.io.data_offset
                self.run_view[off : off + n] = b"\xff" * n
            elif run.exit_reason == api.KVM_EXIT_MMIO and not run.mmio.is_write:
                run.mmio.data = [0xFF] * 8
            run.immediate_exit = 1
            if libc.ioctl(self.fd, api.KVM_RUN, ZERO) < 0 or run.exit_reason not in IO_EXITS:
                return

    def exit_for(self, reason: int) -> Exit:
        """The Exit for a KVM exit reason that is neither I/O nor EINTR."""
        run = self.run
        if reason == api.KVM_EXIT_HLT:  # only without an in-kernel APIC
            for_good = not self.get_regs().rflags & x86.FLAG_IF
            return Exit(ExitKind.HALT, "hlt", {"for_good": for_good})
        if reason == api.KVM_EXIT_SHUTDOWN:
            return Exit(ExitKind.SHUTDOWN, "triple fault")
        if reason == api.KVM_EXIT_DEBUG:
            arch = run.debug.arch
            detail = {"exception": arch.exception, "pc": arch.pc, "dr6": arch.dr6, "dr7": arch.dr7}
            if arch.exception == x86.Vector.DB and arch.dr6 & (1 << 14):  # DR6.BS
                what = "single step"
            elif arch.exception == x86.Vector.BP:
                what = "breakpoint"
            else:
                what = f"debug exception {arch.exception}"
            return Exit(ExitKind.DEBUG, what, detail)
        if reason == api.KVM_EXIT_FAIL_ENTRY:
            code = run.fail_entry.hardware_entry_failure_reason
            host_cpu = run.fail_entry.cpu
            return Exit(
                ExitKind.ERROR,
                f"KVM could not enter the guest: hardware entry failure reason {code:#x} (host cpu {host_cpu})",
                {"exit_reason": reason, "hardware_entry_failure_reason": code, "host_cpu": host_cpu},
            )
        if reason == api.KVM_EXIT_INTERNAL_ERROR:
            sub = run.internal.suberror
            data = [int(run.internal.data[i]) for i in range(min(run.internal.ndata, 16))]
            what = api.INTERNAL_ERROR_NAMES.get(sub, "unknown")
            words = " ".join(f"{d:#x}" for d in data)
            return Exit(
                ExitKind.ERROR,
                f"KVM internal error: suberror {sub} ({what}), data [{words}]",
                {"exit_reason": reason, "suberror": sub, "data": data},
            )
        if reason == api.KVM_EXIT_UNKNOWN:
            hw = run.hw.hardware_exit_reason
            return Exit(
                ExitKind.ERROR,
                f"KVM exit with unknown reason: hardware exit reason {hw:#x}",
                {"exit_reason": reason, "hardware_exit_reason": hw},
            )
        name = api.EXIT_NAMES.get(reason, "?")
        return Exit(ExitKind.ERROR, f"unexpected KVM exit reason {reason} ({name})", {"exit_reason": reason})


def dispatch_io(view: memoryview, bus: Bus) -> None:
    direction, size, port, count, off = _IO_LAYOUT.unpack_from(view, _RUN_IO)
    fmt = _PIO_FORMATS[size]
    if direction == api.KVM_EXIT_IO_OUT:
        if count == 1:
            bus.pio_write(port, size, fmt.unpack_from(view, off)[0])
        else:  # string I/O: `count` elements of `size` bytes each
            for (value,) in fmt.iter_unpack(view[off : off + size * count]):
                bus.pio_write(port, size, value)
    else:
        for i in range(count):
            fmt.pack_into(view, off + i * size, bus.pio_read(port, size))


def dispatch_mmio(view: memoryview, bus: Bus, readonly: list[tuple[int, int]]) -> None:
    addr, data, length, is_write = _MMIO_LAYOUT.unpack_from(view, _RUN_MMIO)
    if is_write:
        if any(start <= addr < end for start, end in readonly):
            return  # a write to ROM: dropped, as on real hardware
        if length in (1, 2, 4, 8):
            bus.mmio_write(addr, length, int.from_bytes(data[:length], "little"))
        else:  # odd sizes (page-crossing pieces): byte by byte
            for i in range(length):
                bus.mmio_write(addr + i, 1, data[i])
    else:
        if length in (1, 2, 4, 8):
            value = bus.mmio_read(addr, length).to_bytes(length, "little")
        else:
            value = bytes(bus.mmio_read(addr + i, 1) for i in range(length))
        start = _RUN_MMIO + 8
        view[start : start + length] = value
