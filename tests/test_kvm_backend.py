"""The KVM backend against tiny guests (this host's KVM may be nested and slow: keep them tiny)."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emu.backends.base import BackendUnavailable, ExitKind
from emu.backends.kvm import KvmBackend
from emu.bus import Bus
from emu.cpu import x86
from emu.cpu.state import CpuState, DescriptorTable, Mode, Segment
from emu.errors import EmuError
from emu.memory import GuestMemory
from emu.tools.asm import assemble


def _kvm_unusable_reason() -> str | None:
    memory = GuestMemory(2 << 20)
    try:
        KvmBackend(memory, Bus()).close()
    except BackendUnavailable as e:
        return str(e)
    finally:
        memory.close()
    return None


_reason = _kvm_unusable_reason()
if _reason is not None:
    pytest.skip(f"KVM backend unusable here: {_reason}", allow_module_level=True)

GUEST = 0x8000  # where every test program is loaded (and where it starts)
DATA = 0x9000  # scratch data the guests write for the test to read
GDT = 0x6000
PML4 = 0x10000  # identity-mapped page tables for 64-bit guests (built by the host)
PORT = 0x500  # the test port device
STOP_PORT = 0x510  # writing here makes the device call request_stop()
MMIO = 0xD000_0000  # inside the MMIO hole: no RAM there
CODE32 = Segment(selector=0x08, base=0, limit=0xFFFF_FFFF, type=0xB, db=1, g=1)
DATA32 = Segment(selector=0x10, base=0, limit=0xFFFF_FFFF, type=0x3, db=1, g=1)
CODE64 = Segment(selector=0x18, base=0, limit=0xFFFF_FFFF, type=0xB, l=1, g=1)
GDT_ENTRIES = (0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00AF_9A00_0000_FFFF, 0, 0)
GDT_NASM = """
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF   ; 0x08: 32-bit code
    dq 0x00CF92000000FFFF   ; 0x10: data
    dq 0x00AF9A000000FFFF   ; 0x18: 64-bit code
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt
"""


class PortDevice:
    """Records port writes; reads return `value`."""

    def __init__(self, value: int = 0x5A) -> None:
        self.value = value
        self.writes: list[tuple[int, int, int]] = []  # (offset, size, value)
        self.reads = 0

    def io_read(self, offset: int, size: int) -> int:
        self.reads += 1
        return self.value

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class StopDevice:
    """A checkpoint: the guest writes a number, the device records it and stops the vCPU."""

    def __init__(self) -> None:
        self.backend: KvmBackend | None = None
        self.seen: list[int] = []

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.seen.append(value)
        assert self.backend is not None
        self.backend.request_stop()


class RegisterFile:
    """An MMIO device with 8-byte registers that read back what was written (default pattern)."""

    def __init__(self) -> None:
        self.regs: dict[int, int] = {}
        self.log: list[tuple[str, int, int, int]] = []

    def mmio_read(self, offset: int, size: int) -> int:
        value = self.regs.get(offset, 0x1122_3344_5566_7788 + offset) & ((1 << 8 * size) - 1)
        self.log.append(("r", offset, size, value))
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))
        self.regs[offset] = value


@dataclasses.dataclass
class Vm:
    memory: GuestMemory
    bus: Bus
    cpu: KvmBackend
    port: PortDevice
    stop: StopDevice

    def load(self, source: str, state: CpuState | None = None) -> CpuState:
        """Assemble `source` at GUEST and point the CPU at it (real mode CS=0 IP=GUEST by default)."""
        self.memory.write(GUEST, assemble(source, name="kvm-test"))
        if state is None:
            state = real_mode_state()
        self.cpu.set_state(state)
        return state


@pytest.fixture
def vm() -> Iterator[Vm]:
    memory = GuestMemory(32 << 20, firmware_size=64 << 10)
    bus = Bus()
    port, stop = PortDevice(), StopDevice()
    bus.register_pio(PORT, 4, port, "test-port")
    bus.register_pio(STOP_PORT, 1, stop, "test-stop")
    cpu = KvmBackend(memory, bus)
    stop.backend = cpu
    try:
        yield Vm(memory, bus, cpu, port, stop)
    finally:
        cpu.close()
        memory.close()


def real_mode_state() -> CpuState:
    s = CpuState()
    s.cs = Segment.real(0, code=True)
    s.rip = GUEST
    return s


def write_gdt(memory: GuestMemory) -> None:
    for i, entry in enumerate(GDT_ENTRIES):
        memory.write_u64(GDT + 8 * i, entry)


def protected_mode_state() -> CpuState:
    """32-bit flat protected mode without paging, as a boot loader leaves it."""
    s = CpuState()
    s.cs = dataclasses.replace(CODE32)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(s, name, dataclasses.replace(DATA32))
    s.gdt = DescriptorTable(GDT, len(GDT_ENTRIES) * 8 - 1)
    s.idt = DescriptorTable(0, 0)
    s.cr0 = x86.Cr0.PE | x86.Cr0.ET
    s.rip = GUEST
    s.rsp = 0x7000
    s.rdx = 0
    return s


def build_page_tables(memory: GuestMemory) -> None:
    """Identity-map 0-1 GiB and 3-4 GiB with 2 MiB pages (PML4 -> PDPT -> two PDs)."""
    pdpt, pd_low, pd_high = PML4 + 0x1000, PML4 + 0x2000, PML4 + 0x3000
    memory.write_u64(PML4, pdpt | 3)
    memory.write_u64(pdpt, pd_low | 3)
    memory.write_u64(pdpt + 3 * 8, pd_high | 3)
    for i in range(512):
        memory.write_u64(pd_low + 8 * i, (i << 21) | 0x83)  # present, writable, 2 MiB
        memory.write_u64(pd_high + 8 * i, (0xC000_0000 + (i << 21)) | 0x9B)  # also cache-disabled


def long_mode_state(memory: GuestMemory) -> CpuState:
    """64-bit long mode with paging, as a kernel's early entry point sees it."""
    write_gdt(memory)
    build_page_tables(memory)
    s = protected_mode_state()
    s.cs = dataclasses.replace(CODE64)
    s.tr = Segment(selector=0x20, base=0x5000, limit=0x67, type=x86.SEG_TYPE_TSS_BUSY, s=0)
    s.cr0 = x86.Cr0.PE | x86.Cr0.MP | x86.Cr0.ET | x86.Cr0.NE | x86.Cr0.WP | x86.Cr0.PG
    s.cr3 = PML4
    s.cr4 = x86.Cr4.PAE | x86.Cr4.OSFXSR | x86.Cr4.OSXMMEXCPT
    s.efer = x86.Efer.SCE | x86.Efer.LME | x86.Efer.LMA | x86.Efer.NXE
    return s


# -- (h) availability ---------------------------------------------------------------------------
def test_missing_device_is_reported_as_unavailable() -> None:
    memory = GuestMemory(2 << 20)
    try:
        with pytest.raises(BackendUnavailable, match="/nonexistent/kvm does not exist"):
            KvmBackend(memory, Bus(), device="/nonexistent/kvm")
    finally:
        memory.close()


def test_a_device_that_is_not_kvm_is_reported_as_unavailable() -> None:
    memory = GuestMemory(2 << 20)
    try:
        with pytest.raises(BackendUnavailable, match="/dev/null is not a KVM device"):
            KvmBackend(memory, Bus(), device="/dev/null")
    finally:
        memory.close()


def test_abi_matches_the_installed_linux_headers(tmp_path: Path) -> None:
    """ioctl numbers and struct layouts equal what the host's C headers say."""
    from emu.backends.kvm import api

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("needs a C compiler and the Linux kernel headers")
    # ioctl numbers are the constants carrying KVM's ioctl type byte.
    names = [n for n in dir(api) if n.startswith("KVM_") and (getattr(api, n) >> 8) & 0xFF == api.KVMIO]
    structs = ["kvm_regs", "kvm_sregs", "kvm_fpu", "kvm_debugregs", "kvm_run", "kvm_guest_debug", "kvm_xsave",
               "kvm_irqchip", "kvm_pit_state2", "kvm_ioeventfd", "kvm_irqfd"]  # fmt: skip
    fields = ("io", "mmio", "internal", "debug", "kvm_valid_regs")
    lines = [f'printf("{n} %lu\\n", (unsigned long){n});' for n in names]
    lines += [f'printf("sizeof:{s} %lu\\n", (unsigned long)sizeof(struct {s}));' for s in structs]
    for field in fields:
        lines.append(f'printf("offsetof:{field} %lu\\n", (unsigned long)offsetof(struct kvm_run, {field}));')
    src = tmp_path / "abi.c"
    head = "#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void) {\n"
    src.write_text(head + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run([cc, "-o", str(tmp_path / "abi"), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "abi")], check=True, capture_output=True, text=True).stdout
    expected = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    ours: dict[str, int] = {n: getattr(api, n) for n in names}
    ours |= {f"sizeof:{s}": api.ffi.sizeof(f"struct {s}") for s in structs if s != "kvm_run"}
    ours |= {f"offsetof:{f}": api.ffi.offsetof("struct kvm_run", f) for f in fields}
    del expected["sizeof:kvm_run"]  # we declare kvm_run only up to the sync-regs area
    assert len(names) >= 25
    assert ours == expected


# -- (a) port I/O ------------------------------------------------------------------------------
def test_real_mode_port_io_reaches_the_bus_in_order(vm: Vm) -> None:
    vm.port.value = 0x5A
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            mov dx, {PORT:#x}
            mov al, 0x11
            out dx, al
            mov al, 0x22
            out dx, al
            mov ax, 0x3344
            out dx, ax
            in al, dx               ; the device answers 0x5A
            mov [{DATA:#x}], al
            add al, 1
            out dx, al              ; 0x5B proves the IN result reached the guest
            mov dx, {PORT + 2:#x}
            mov eax, 0xCAFEF00D
            out dx, eax
            cli
            hlt
    """)
    ex = vm.cpu.run()
    assert ex.kind is ExitKind.HALT
    assert vm.port.writes == [(0, 1, 0x11), (0, 1, 0x22), (0, 2, 0x3344), (0, 1, 0x5B), (2, 4, 0xCAFEF00D)]
    assert vm.memory.read_u8(DATA) == 0x5A
    assert vm.port.reads == 1


def test_string_port_io(vm: Vm) -> None:
    vm.port.value = 0x77
    vm.memory.write(DATA, b"hello, world")
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            cld
            xor ax, ax
            mov es, ax
            mov dx, {PORT:#x}
            mov si, {DATA:#x}
            mov cx, 12
            rep outsb
            mov si, {DATA:#x}
            mov cx, 3
            rep outsw               ; 16-bit elements
            mov di, {DATA + 0x100:#x}
            mov cx, 5
            rep insb                ; five reads of 0x77
            cli
            hlt
    """)
    assert vm.cpu.run().kind is ExitKind.HALT
    written = vm.port.writes
    assert bytes(v for _, size, v in written[:12]) == b"hello, world"
    assert written[12:] == [(0, 2, 0x6568), (0, 2, 0x6C6C), (0, 2, 0x2C6F)]
    assert vm.memory.read(DATA + 0x100, 6) == b"\x77" * 5 + b"\x00"
    assert vm.port.reads == 5


def test_bus_exception_propagates_and_the_instruction_completes(vm: Vm) -> None:
    class Broken:
        def io_read(self, offset: int, size: int) -> int:
            raise RuntimeError("device on fire")

        def io_write(self, offset: int, size: int, value: int) -> None:
            raise RuntimeError("device on fire")

    vm.bus.register_pio(0x600, 1, Broken(), "broken")
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            mov dx, 0x600
            in al, dx
        after_in:
            mov dx, {PORT:#x}
            out dx, al
            cli
            hlt
    """)
    with pytest.raises(RuntimeError, match="device on fire"):
        vm.cpu.run()
    state = vm.cpu.get_state()
    assert state.rip == GUEST + 4  # past the IN
    assert state.rax & 0xFF == 0xFF  # a failed read returns all-ones
    assert vm.cpu.run().kind is ExitKind.HALT  # and the guest can go on
    assert vm.port.writes == [(0, 1, 0xFF)]


# -- (b) MMIO ------------------------------------------------------------------------------------
def test_mmio_reads_and_writes_go_through_the_bus(vm: Vm) -> None:
    dev = RegisterFile()
    vm.bus.register_mmio(MMIO, 0x1000, dev, "regs")
    write_gdt(vm.memory)
    vm.load(
        f"""
        bits 32
        org {GUEST:#x}
            mov dword [{MMIO:#x}], 0x12345678
            mov eax, [{MMIO:#x}]
            mov [{DATA:#x}], eax
            mov eax, [{MMIO + 8:#x}]            ; never written: the device's pattern
            mov [{DATA + 4:#x}], eax
            mov byte [{MMIO + 0x10:#x}], 0xAB
            mov word [{MMIO + 0x18:#x}], 0xBEEF
            mov ax, [{MMIO + 0x18:#x}]
            mov [{DATA + 8:#x}], ax
            mov eax, [{MMIO + 0x1000:#x}]       ; unclaimed
            mov [{DATA + 12:#x}], eax
            mov al, [0xFFFF0000]                ; ROM
            mov [{DATA + 16:#x}], al
            mov byte [0xFFFF0000], 0x99         ; a write to ROM is dropped
            mov al, [0xFFFF0000]
            mov [{DATA + 17:#x}], al
            cli
            hlt
        """,
        protected_mode_state(),
    )
    vm.memory.write_u8(0xFFFF_0000, 0x42)
    assert vm.cpu.run().kind is ExitKind.HALT
    assert vm.memory.read_u32(DATA) == 0x12345678
    assert vm.memory.read_u32(DATA + 4) == (0x1122_3344_5566_7788 + 8) & 0xFFFF_FFFF
    assert vm.memory.read_u16(DATA + 8) == 0xBEEF
    assert vm.memory.read_u32(DATA + 12) == 0xFFFF_FFFF
    assert vm.memory.read(DATA + 16, 2) == b"\x42\x42"
    assert vm.memory.read_u8(0xFFFF_0000) == 0x42
    assert dev.log == [
        ("w", 0, 4, 0x12345678),
        ("r", 0, 4, 0x12345678),
        ("r", 8, 4, (0x1122_3344_5566_7788 + 8) & 0xFFFF_FFFF),
        ("w", 0x10, 1, 0xAB),
        ("w", 0x18, 2, 0xBEEF),
        ("r", 0x18, 2, 0xBEEF),
    ]


def test_mmio_8_byte_accesses_in_long_mode(vm: Vm) -> None:
    dev = RegisterFile()
    vm.bus.register_mmio(MMIO, 0x1000, dev, "regs")
    vm.load(
        f"""
        bits 64
        org {GUEST:#x}
            mov rcx, {MMIO:#x}             ; (a 32-bit absolute address would be sign-extended)
            mov rax, 0x0102030405060708
            mov [rcx + 0x20], rax
            mov rbx, [rcx + 0x28]
            mov [{DATA:#x}], rbx
            cli
            hlt
        """,
        long_mode_state(vm.memory),
    )
    assert vm.cpu.run().kind is ExitKind.HALT
    assert dev.log == [("w", 0x20, 8, 0x0102030405060708), ("r", 0x28, 8, 0x1122_3344_5566_77B0)]
    assert vm.memory.read_u64(DATA) == 0x1122_3344_5566_77B0


# -- (c) mode switches ---------------------------------------------------------------------------
def test_guest_switches_to_protected_and_long_mode(vm: Vm) -> None:
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            cli
            xor ax, ax
            mov ds, ax
            mov ss, ax
            mov sp, 0x7000
            lgdt [gdt_desc]
            mov eax, cr0
            or eax, 1
            mov cr0, eax
            jmp 0x08:pm32
        bits 32
        pm32:
            mov ax, 0x10
            mov ds, ax
            mov es, ax
            mov ss, ax
            mov dx, {STOP_PORT:#x}
            mov al, 1
            out dx, al                      ; checkpoint 1: 32-bit protected mode
            mov dword [{PML4:#x}], {PML4 + 0x1000 + 3:#x}
            mov dword [{PML4 + 0x1000:#x}], {PML4 + 0x2000 + 3:#x}
            mov dword [{PML4 + 0x2000:#x}], 0x83
            mov eax, {PML4:#x}
            mov cr3, eax
            mov eax, cr4
            or eax, 1 << 5                  ; PAE
            mov cr4, eax
            mov ecx, 0xC0000080
            rdmsr
            or eax, 1 << 8                  ; EFER.LME
            wrmsr
            mov eax, cr0
            or eax, 1 << 31                 ; paging on: long mode
            mov cr0, eax
            jmp 0x18:lm64
        bits 64
        lm64:
            mov dx, {STOP_PORT:#x}
            mov al, 2
            out dx, al                      ; checkpoint 2: 64-bit long mode
            cli
            hlt
        {GDT_NASM}
    """)
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    assert vm.stop.seen == [1]
    pm = vm.cpu.get_state()
    assert pm.mode is Mode.PROTECTED32
    assert pm.cs == CODE32  # selector 8, flat, code, 32-bit (D=1, L=0), 4 KiB granular
    assert pm.cr0 & x86.Cr0.PE and not pm.cr0 & x86.Cr0.PG
    assert pm.efer == 0
    assert pm.ds.selector == 0x10 and pm.ds.db == 1

    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    assert vm.stop.seen == [1, 2]
    lm = vm.cpu.get_state()
    assert lm.mode is Mode.LONG
    assert lm.cs == CODE64  # selector 0x18, flat, code, 64-bit (L=1, D=0)
    assert lm.cr0 & (x86.Cr0.PE | x86.Cr0.PG) == x86.Cr0.PE | x86.Cr0.PG
    assert lm.cr4 & x86.Cr4.PAE
    assert lm.cr3 == PML4
    assert lm.efer & (x86.Efer.LME | x86.Efer.LMA) == x86.Efer.LME | x86.Efer.LMA
    assert lm.paging

    assert vm.cpu.run().kind is ExitKind.HALT


# -- (d) halt ----------------------------------------------------------------------------------
def test_cli_hlt_is_reported_as_halted_for_good(vm: Vm) -> None:
    vm.load(f"bits 16\norg {GUEST:#x}\ncli\nhlt\n")
    start = time.monotonic()
    ex = vm.cpu.run()
    elapsed = time.monotonic() - start
    assert ex.kind is ExitKind.HALT
    assert ex.detail["for_good"] is True
    assert elapsed < 1.0
    assert vm.cpu.is_halted_for_good()
    assert vm.cpu.get_state().rip == GUEST + 2


def test_set_state_wakes_a_halted_cpu(vm: Vm) -> None:
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            cli
            hlt
        second:
            mov dx, {PORT:#x}
            mov al, 7
            out dx, al
            cli
            hlt
    """)
    assert vm.cpu.run().detail["for_good"]
    state = vm.cpu.get_state()
    state.rip = GUEST + 2
    vm.cpu.set_state(state)
    assert not vm.cpu.is_halted_for_good()
    assert vm.cpu.run().kind is ExitKind.HALT
    assert vm.port.writes == [(0, 1, 7)]


def test_hlt_with_interrupts_enabled_wakes_on_an_interrupt(vm: Vm) -> None:
    """sti; hlt waits in the kernel; an IRQ through the in-kernel PIC wakes it."""
    vm.memory.write_u32(0x21 * 4, GUEST + 0x100)  # IVT[0x21] (IRQ1) -> handler at 0000:8100
    vm.memory.write(GUEST + 0x100, assemble(f"bits 16\nmov dx, {STOP_PORT:#x}\nmov al, 0xEE\nout dx, al\ncli\nhlt\n"))
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            mov al, 0x11            ; ICW1: edge, cascade, ICW4
            out 0x20, al
            mov al, 0x20            ; ICW2: vectors 0x20-0x27
            out 0x21, al
            mov al, 0x04
            out 0x21, al
            mov al, 0x01
            out 0x21, al
            mov al, 0xFD            ; unmask IRQ1 only
            out 0x21, al
            mov dx, {STOP_PORT:#x}
            mov al, 1
            out dx, al              ; ready
            sti
        idle:
            hlt
            jmp idle
    """)
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(vm.cpu.run()))
    t.start()
    time.sleep(0.5)  # several kicks: the CPU is halted but IF=1, so run() must keep going
    assert t.is_alive()
    vm.cpu.kernel_irqchip().set_irq(1, True)  # from another thread, as devices do
    vm.cpu.kernel_irqchip().set_irq(1, False)
    t.join(5)
    assert box and box[0].kind is ExitKind.INTERRUPTED  # type: ignore[attr-defined]
    assert vm.stop.seen == [1, 0xEE]


def test_in_kernel_pit_interrupt_wakes_hlt(vm: Vm) -> None:
    """The in-kernel PIT and PIC deliver IRQ0 to a guest waiting in `sti; hlt`."""
    vm.memory.write_u32(0x20 * 4, GUEST + 0x100)  # IVT[0x20] (IRQ0) -> handler at 0000:8100
    vm.memory.write(GUEST + 0x100, assemble(f"bits 16\nmov dx, {STOP_PORT:#x}\nmov al, 0x70\nout dx, al\ncli\nhlt\n"))
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            mov al, 0x11
            out 0x20, al
            mov al, 0x20            ; IRQ0 -> vector 0x20
            out 0x21, al
            mov al, 0x04
            out 0x21, al
            mov al, 0x01
            out 0x21, al
            mov al, 0xFE            ; unmask IRQ0 only
            out 0x21, al
            mov al, 0x34            ; PIT channel 0, lo/hi byte, mode 2
            out 0x43, al
            mov al, 0xA9            ; divisor 1193: a tick every millisecond
            out 0x40, al
            mov al, 0x04
            out 0x40, al
            sti
        idle:
            hlt
            jmp idle
    """)
    start = time.monotonic()
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    assert time.monotonic() - start < 1
    assert vm.stop.seen == [0x70]


# -- (e) triple fault ----------------------------------------------------------------------------
def test_triple_fault_is_shutdown(vm: Vm) -> None:
    write_gdt(vm.memory)
    vm.load(f"bits 32\norg {GUEST:#x}\nud2\n", protected_mode_state())  # IDT limit 0
    ex = vm.cpu.run()
    assert ex.kind is ExitKind.SHUTDOWN
    assert ex.message == "triple fault"


# -- (f) stopping --------------------------------------------------------------------------------
def test_request_stop_from_another_thread(vm: Vm) -> None:
    vm.load(f"""
        bits 16
        org {GUEST:#x}
        spin:
            cmp byte [{DATA:#x}], 0
            je spin
            mov dx, {PORT:#x}
            mov al, 3
            out dx, al
            cli
            hlt
    """)
    timer = threading.Timer(0.3, vm.cpu.request_stop)
    timer.start()
    start = time.monotonic()
    ex = vm.cpu.run()
    assert ex.kind is ExitKind.INTERRUPTED
    assert 0.25 < time.monotonic() - start < 2
    assert GUEST <= vm.cpu.get_state().rip < GUEST + 7  # still spinning
    vm.memory.write_u8(DATA, 1)
    ex = vm.cpu.run()  # runs normally again
    assert ex.kind is ExitKind.HALT
    assert vm.port.writes == [(0, 1, 3)]


def test_request_stop_before_run_is_not_lost(vm: Vm) -> None:
    vm.load(f"bits 16\norg {GUEST:#x}\njmp $\n")
    vm.cpu.request_stop()
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    timer = threading.Timer(0.2, vm.cpu.request_stop)
    timer.start()
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED


def test_stop_and_halt_detection_without_our_signal_handler() -> None:
    """A backend created outside the main thread cannot install a SIGUSR1 handler: still works,
    also when run() moves to another thread (which may reuse the first one's thread id)."""
    script = textwrap.dedent(f"""
        import signal, threading
        from emu.backends.kvm import KvmBackend
        from emu.bus import Bus
        from emu.cpu.state import CpuState, Segment
        from emu.memory import GuestMemory

        box = {{}}
        state = CpuState(); state.cs = Segment.real(0, code=True); state.rip = {GUEST}

        def first():
            memory = GuestMemory(4 << 20)
            cpu = box["cpu"] = KvmBackend(memory, Bus())
            memory.write({GUEST}, bytes([0xEB, 0xFE, 0xFA, 0xF4]))  # jmp $; cli; hlt
            cpu.set_state(state)
            threading.Timer(0.2, cpu.request_stop).start()
            print(cpu._kick_mode.value, cpu.run().kind.value)

        def second():
            cpu = box["cpu"]
            state.rip = {GUEST + 2}
            cpu.set_state(state)
            print(cpu.run().detail)
            cpu.close()

        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        for target in (first, second):
            t = threading.Thread(target=target)
            t.start()
            t.join(10)
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["masked interrupted", "{'for_good': True}"]


# -- single step ---------------------------------------------------------------------------------
def test_step_executes_one_instruction(vm: Vm) -> None:
    vm.port.value = 0x5A
    vm.load(f"""
        bits 16
        org {GUEST:#x}
            mov ax, 1
            mov bx, 2
            mov dx, {PORT:#x}
            in al, dx
            out dx, al
            nop
            cli
            hlt
    """)
    rips = []
    for _ in range(4):
        ex = vm.cpu.step()
        assert ex.kind is ExitKind.DEBUG, ex
        assert ex.message == "single step"
        rips.append(vm.cpu.get_state().rip)
    assert rips == [GUEST + 3, GUEST + 6, GUEST + 9, GUEST + 10]
    state = vm.cpu.get_state()
    assert (state.rax, state.rbx) == (0x5A, 2)
    # Stepping over an OUT: the write happens. When KVM runs the OUT in its instruction emulator
    # (always, on a nested PVM host) it skips the single-step trap (a FIXME in KVM's
    # x86_emulate_instruction), so the step may run the next instruction too.
    assert vm.cpu.step().kind is ExitKind.DEBUG
    assert vm.port.writes == [(0, 1, 0x5A)]
    assert vm.cpu.get_state().rip in (GUEST + 11, GUEST + 12)
    assert vm.cpu.run().kind is ExitKind.HALT  # single-stepping is off again


# -- (g) state round trip ---------------------------------------------------------------------------
def _busy_state(s: CpuState) -> CpuState:
    """Give every register class non-default values a real guest could have."""
    for i, name in enumerate(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r15")):
        setattr(s, name, 0x1111 * (i + 1))
    s.rflags = x86.FLAG_FIXED | x86.FLAG_ZF | x86.FLAG_CF
    s.cr2 = 0x1234_5000
    s.dr0, s.dr1, s.dr2, s.dr3 = 0x1000, 0x2000, 0x3000, 0x4000
    s.dr7 = 0x400 | 0b11  # DR0 enabled, local and global
    s.fpu.fcw = 0x27F
    s.fpu.fsw = 7 << 11  # TOP = 7
    s.fpu.ftw = 0x80  # physical register 7 (= ST0) valid
    s.fpu.st = [struct.pack("<QH", 1 << 63, 0x3FFF)] + [bytes(10)] * 7  # ST0 = 1.0
    s.fpu.xmm = [bytes(range(i, i + 16)) for i in range(16)]
    s.fpu.mxcsr = 0x1F80 | 0x6000  # round toward zero
    s.msrs[x86.Msr.SYSENTER_CS] = 0x10
    s.msrs[x86.Msr.SYSENTER_ESP] = 0x7000
    s.msrs[x86.Msr.SYSENTER_EIP] = 0x8100
    return s


def test_round_trip_real_mode_reset_state(vm: Vm) -> None:
    reset = CpuState()
    vm.cpu.set_state(reset)
    assert vm.cpu.get_state() == reset
    busy = _busy_state(real_mode_state())
    vm.cpu.set_state(busy)
    assert vm.cpu.get_state() == busy


def test_round_trip_protected_mode(vm: Vm) -> None:
    write_gdt(vm.memory)
    s = _busy_state(protected_mode_state())
    s.tr = Segment(selector=0x20, base=0x5000, limit=0x67, type=x86.SEG_TYPE_TSS_BUSY, s=0)
    s.idt = DescriptorTable(0x4000, 0x7FF)
    vm.cpu.set_state(s)
    assert vm.cpu.get_state() == s


def test_round_trip_long_mode(vm: Vm) -> None:
    s = _busy_state(long_mode_state(vm.memory))
    s.rip = 0xFFFF_FFFF_8100_0000
    s.rsp = 0xFFFF_8880_0000_7000
    s.fs = dataclasses.replace(DATA32, selector=0, base=0x7F12_3456_0000)
    s.gs = dataclasses.replace(DATA32, selector=0, base=0xFFFF_8880_1234_0000)
    s.msrs |= {
        x86.Msr.STAR: 0x0023_0010_0000_0000,
        x86.Msr.LSTAR: 0xFFFF_FFFF_8100_0040,
        x86.Msr.CSTAR: 0xFFFF_FFFF_8100_0080,
        x86.Msr.SFMASK: 0x4_7700,
        x86.Msr.KERNEL_GS_BASE: 0x7F00_0000_1000,
        x86.Msr.PAT: 0x0007_0406_0007_0406,
    }
    # Null selectors in DS/ES as 64-bit kernels leave them: unusable, all attributes clear.
    s.ds = Segment(selector=0, base=0, limit=0, type=0, s=0, present=0, unusable=1)
    s.es = dataclasses.replace(s.ds)
    vm.cpu.set_state(s)
    assert vm.cpu.get_state() == s


def test_guest_sees_the_state_that_was_set(vm: Vm) -> None:
    """set_state reaches the CPU, not only KVM's copy: the guest stores what it finds."""
    state = _busy_state(long_mode_state(vm.memory))
    state.msrs[x86.Msr.LSTAR] = 0xFFFF_FFFF_8100_0040
    state.rip = GUEST
    image = DATA + 0x100  # FXSAVE image: x87 and SSE state as the CPU holds it
    vm.load(
        f"""
        bits 64
        org {GUEST:#x}
            mov [{DATA:#x}], rbx
            fxsave [{image:#x}]
            mov ecx, 0xC0000082
            rdmsr
            mov [{DATA + 8:#x}], eax
            mov [{DATA + 12:#x}], edx
            mov rax, dr0
            mov [{DATA + 16:#x}], rax
            cli
            hlt
        """,
        state,
    )
    assert vm.cpu.run().kind is ExitKind.HALT
    assert struct.unpack("<QQQ", vm.memory.read(DATA, 24)) == (0x2222, 0xFFFF_FFFF_8100_0040, 0x1000)
    fcw, fsw, ftw = struct.unpack("<HHB", vm.memory.read(image, 5))
    assert (fcw, fsw, ftw) == (0x27F, 7 << 11, 0x80)
    assert vm.memory.read_u32(image + 24) == 0x7F80  # MXCSR
    assert vm.memory.read(image + 32, 10) == state.fpu.st[0]
    assert vm.memory.read(image + 160 + 5 * 16, 16) == state.fpu.xmm[5]


def test_close_is_idempotent_and_final() -> None:
    memory = GuestMemory(2 << 20)
    cpu = KvmBackend(memory, Bus())
    cpu.set_state(real_mode_state())
    cpu.close()
    cpu.close()
    cpu.request_stop()  # harmless after close
    with pytest.raises(RuntimeError, match="closed"):
        cpu.run()
    memory.close()


# -- several vCPUs ---------------------------------------------------------------------------------
AP_CODE = 0xA000  # the APs' real-mode entry: STARTUP vector AP_CODE >> 12, CS = 0x0A00, IP = 0
AP_PARK = 0x40  # offset in AP_CODE of `cli; hlt` (ap_image puts it there)


class CpuPort:
    """Records which vCPU (and host thread) wrote each value."""

    def __init__(self) -> None:
        self.backend: KvmBackend | None = None
        self.writes: list[tuple[int, int, str]] = []  # (value, current_cpu(), thread name)

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        assert self.backend is not None
        if value == 0xEE:
            raise ValueError("the device failed")
        self.writes.append((value, self.backend.current_cpu(), threading.current_thread().name))


@dataclasses.dataclass
class SmpVm:
    memory: GuestMemory
    cpu: KvmBackend
    port: CpuPort
    stop: StopDevice

    def load(self, bsp: str, ap: str) -> None:
        """`bsp`: 32-bit code at GUEST, entered in flat protected mode (the local APIC's page is
        reachable there); `ap`: the APs' real-mode code at AP_CODE, `cli; hlt` at AP_PARK after it."""
        write_gdt(self.memory)
        self.memory.write(GUEST, bsp_image(bsp))
        self.memory.write(AP_CODE, ap_image(ap))
        self.cpu.set_state(protected_mode_state())


def bsp_image(source: str) -> bytes:
    return assemble(f"bits 32\norg {GUEST:#x}\n{source}", name="kvm-smp-bsp")


def ap_image(source: str) -> bytes:
    code = assemble(f"bits 16\norg 0\n{source}", name="kvm-smp-ap")
    assert len(code) <= AP_PARK
    return code.ljust(AP_PARK, b"\x90") + b"\xfa\xf4"  # nops, then `cli; hlt` at AP_PARK


@contextlib.contextmanager
def smp_vm(cpus: int) -> Iterator[SmpVm]:
    memory = GuestMemory(32 << 20, firmware_size=64 << 10)
    bus = Bus()
    port, stop = CpuPort(), StopDevice()
    bus.register_pio(PORT, 4, port, "test-port")
    bus.register_pio(STOP_PORT, 1, stop, "test-stop")
    cpu = KvmBackend(memory, bus, cpus=cpus)
    port.backend = stop.backend = cpu
    try:
        yield SmpVm(memory, cpu, port, stop)
    finally:
        cpu.close()
        memory.close()


# BSP: the local APIC enabled, then INIT and STARTUP to all but self (KVM's in-kernel APIC needs
# none of the SDM's delays); with `n`, then wait until n APs counted themselves in DATA and stop.
def start_aps(n: int = 0) -> str:
    source = f"""
        mov dword [0xFEE000F0], 0x1FF
        mov dword [0xFEE00310], 0
        mov dword [0xFEE00300], 0xC4500
        mov dword [0xFEE00300], 0xC4600 | {AP_CODE >> 12:#x}
    """
    if n:
        source += f"""
    wait_aps:
        cmp dword [{DATA:#x}], {n}
        jb wait_aps
        mov dx, {STOP_PORT:#x}
        out dx, al
        """
    return source


# AP: count in, write 1 to the port, then count in DATA + 4 for ever.
AP_SPIN = f"""
        xor ax, ax
        mov ds, ax
        lock inc dword [{DATA:#x}]
        mov dx, {PORT:#x}
        mov al, 1
        out dx, al
    again:
        lock inc dword [{DATA + 4:#x}]
        jmp again
"""


def _new_threads(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]


def test_smp_ap_state_while_it_waits_for_sipi() -> None:
    before = set(threading.enumerate())
    with smp_vm(2) as vm:
        vm.memory.write(GUEST, assemble(f"bits 16\norg {GUEST:#x}\ncli\nhlt\n", name="kvm-smp-halt"))
        vm.cpu.set_state(real_mode_state())
        assert vm.cpu.cpu_status(1) == "wait-for-sipi"
        ap = vm.cpu.get_state(1)
        assert (ap.cs.selector, ap.cs.base, ap.rip) == (0xF000, 0xFFFF_0000, 0xFFF0)  # the reset state
        start = time.monotonic()
        ex = vm.cpu.run()  # the AP's thread now waits in KVM_RUN
        assert time.monotonic() - start < 1.5
        assert (ex.kind, ex.detail) == (ExitKind.HALT, {"for_good": True, "cpu": 0})
        assert vm.cpu.is_halted_for_good()
        assert [vm.cpu.cpu_status(i) for i in (0, 1)] == ["halted", "wait-for-sipi"]
        assert vm.cpu.get_state(1) == ap
        with pytest.raises(EmuError, match="no CPU 2"):
            vm.cpu.get_state(2)
        assert {"vcpu1", "kvm-kicker"} <= set(_new_threads(before))
    assert _new_threads(before) == []  # close() joined them


def test_smp_aps_run_alongside_and_are_paused_stepped_and_reset() -> None:
    with smp_vm(3) as vm:
        vm.load(start_aps(2) + "cli\nhlt\n", AP_SPIN)
        ex = vm.cpu.run()
        assert (ex.kind, ex.detail) == (ExitKind.INTERRUPTED, {"cpu": 0})
        # Each AP's port write went through the Bus on its own thread, which current_cpu() names.
        assert sorted(vm.port.writes) == [(1, 1, "vcpu1"), (1, 2, "vcpu2")]
        # Reading an AP's state pauses the APs: they stay where they were.
        first = vm.cpu.get_state(1)
        count = vm.memory.read_u32(DATA + 4)
        time.sleep(0.05)
        assert vm.cpu.get_state(1) == first
        assert vm.memory.read_u32(DATA + 4) == count
        assert first.cs.base == AP_CODE
        assert [vm.cpu.cpu_status(i) for i in (0, 1, 2)] == ["running"] * 3
        # One instruction of AP 2; the others stand still.
        ap1 = vm.cpu.get_state(1)
        rip = vm.cpu.get_state(2).rip
        ex = vm.cpu.step(2)
        assert (ex.kind, ex.message, ex.detail["cpu"]) == (ExitKind.DEBUG, "single step", 2)
        assert vm.cpu.get_state(2).rip != rip
        assert vm.cpu.get_state(1) == ap1
        assert vm.memory.read_u32(DATA + 4) - count <= 1
        # Park both APs: then the machine halts for good.
        for i in (1, 2):
            state = vm.cpu.get_state(i)
            state.rip = AP_PARK
            vm.cpu.set_state(state, i)
        ex = vm.cpu.run()
        assert (ex.kind, ex.detail) == (ExitKind.HALT, {"for_good": True, "cpu": 0})
        assert [vm.cpu.cpu_status(i) for i in (0, 1, 2)] == ["halted"] * 3
        # A reboot returns the APs to wait-for-SIPI, from where the guest starts them again.
        vm.cpu.reset_platform()
        assert [vm.cpu.cpu_status(i) for i in (1, 2)] == ["wait-for-sipi"] * 2
        assert vm.cpu.get_state(2).rip == 0xFFF0
        vm.memory.write_u32(DATA, 0)
        vm.port.writes.clear()
        vm.cpu.set_state(protected_mode_state())
        assert vm.cpu.run().kind is ExitKind.INTERRUPTED
        assert sorted(vm.port.writes) == [(1, 1, "vcpu1"), (1, 2, "vcpu2")]


def test_smp_aps_stop_when_the_machine_holds_the_guest() -> None:
    """After an INTERRUPTED run() the APs run on (timer kicks cost nothing), until run() is not
    called again for a kick interval or a final stop comes."""
    with smp_vm(2) as vm:
        vm.load(start_aps(1) + "spin:\njmp spin\n", AP_SPIN)
        assert vm.cpu.run().kind is ExitKind.INTERRUPTED
        counts = [vm.memory.read_u32(DATA + 4)]
        for wait in (0.05, 0.6, 0.1):
            time.sleep(wait)
            counts.append(vm.memory.read_u32(DATA + 4))
        assert counts[1] > counts[0]  # still running right after run() returned
        assert counts[3] == counts[2]  # paused after the idle interval
        threading.Timer(0.2, vm.cpu.request_final_stop).start()
        assert vm.cpu.run().kind is ExitKind.INTERRUPTED
        time.sleep(0.08)
        count = vm.memory.read_u32(DATA + 4)
        time.sleep(0.08)  # (both well before the idle pause)
        assert vm.memory.read_u32(DATA + 4) == count


def test_smp_without_our_signal_handler() -> None:
    """Masked mode (backend created outside the main thread): each AP thread masks the kick signal
    itself; pausing, stepping an AP and halt detection still work."""
    gdt = ", ".join(hex(e) for e in GDT_ENTRIES)
    bsp, ap = bsp_image(start_aps(1) + "cli\nhlt\n"), ap_image(AP_SPIN)
    script = textwrap.dedent(f"""
        import signal, threading
        from emu.backends.kvm import KvmBackend
        from emu.bus import Bus
        from emu.cpu.state import CpuState, DescriptorTable, Segment
        from emu.memory import GuestMemory

        class Stop:
            def io_read(self, offset, size): return 0
            def io_write(self, offset, size, value): cpu.request_stop()

        def main():
            global cpu
            memory = GuestMemory(4 << 20)
            bus = Bus()
            bus.register_pio({STOP_PORT}, 1, Stop(), "stop")
            cpu = KvmBackend(memory, bus, cpus=2)
            for i, entry in enumerate([{gdt}]):
                memory.write_u64({GDT} + 8 * i, entry)
            memory.write({GUEST}, {bsp!r})
            memory.write({AP_CODE}, {ap!r})
            s = CpuState()
            s.cs = Segment(selector=8, base=0, limit=0xFFFFFFFF, type=0xB, db=1, g=1)
            for name in ("ds", "es", "fs", "gs", "ss"):
                setattr(s, name, Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, db=1, g=1))
            s.gdt = DescriptorTable({GDT}, {len(GDT_ENTRIES) * 8 - 1})
            s.cr0, s.rip = 0x11, {GUEST}
            cpu.set_state(s)
            print(cpu._kick_mode.value, cpu.run().kind.value, cpu.cpu_status(1))
            print(cpu.step(1).message)
            ap = cpu.get_state(1)
            ap.rip = {AP_PARK}
            cpu.set_state(ap, 1)
            print(cpu.run().detail)
            cpu.close()

        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        t = threading.Thread(target=main)
        t.start()
        t.join(20)
        print(sorted(t.name for t in threading.enumerate()))
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [
        "masked interrupted running",
        "single step",
        "{'for_good': True, 'cpu': 0}",
        "['MainThread']",
    ]


def test_smp_ap_triple_fault_ends_the_run() -> None:
    with smp_vm(2) as vm:
        vm.memory.write_u16(DATA + 0x10, len(GDT_ENTRIES) * 8 - 1)  # the lgdt operand
        vm.memory.write_u32(DATA + 0x12, GDT)
        vm.load(
            start_aps() + "spin:\njmp spin\n",
            f"""
                xor ax, ax
                mov ds, ax
                o32 lgdt [{DATA + 0x10:#x}]
                o32 lidt [{DATA + 0x20:#x}]         ; limit 0: every exception escalates
                mov eax, cr0
                or al, 1
                mov cr0, eax
                jmp dword 0x08:{AP_CODE:#x} + pm
            bits 32
            pm:
                ud2
            """,
        )
        ex = vm.cpu.run()
        assert (ex.kind, ex.message, ex.detail["cpu"]) == (ExitKind.SHUTDOWN, "triple fault", 1)
        assert vm.cpu.get_state(1).mode is Mode.PROTECTED32


def test_smp_ap_bus_exception_is_raised_by_run() -> None:
    with smp_vm(2) as vm:
        vm.load(start_aps() + "spin:\njmp spin\n", f"mov dx, {PORT:#x}\nmov al, 0xEE\nout dx, al\n")
        with pytest.raises(ValueError, match="the device failed"):
            vm.cpu.run()
        assert vm.cpu.get_state(1).rip == 6  # the failed `out` is complete


# -- measurement -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["real", "long"])
def test_port_io_exit_cost(vm: Vm, mode: str, record_property: Callable[[str, object], None]) -> None:
    """A tight `out` loop: every iteration is one exit through Python (reported, not judged).

    user = this thread's time in user mode (Python, cffi, the Bus); kernel = KVM's side, which
    on a nested PVM host includes emulating the loop's instructions.
    """
    n = 5000
    body = f"""
            mov ecx, {n}
            mov dx, {PORT:#x}
        again:
            out dx, al
            dec ecx
            jnz again
            mov dx, {STOP_PORT:#x}
            out dx, al
            jmp $
    """
    if mode == "real":
        vm.load(f"bits 16\norg {GUEST:#x}\n{body}")
    else:
        vm.load(f"bits 64\norg {GUEST:#x}\n{body}", long_mode_state(vm.memory))
    r0, wall0 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
    assert vm.cpu.run().kind is ExitKind.INTERRUPTED
    wall = time.perf_counter() - wall0
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    assert len(vm.port.writes) == n
    per = {
        "wall": wall / n * 1e6,
        "user": (r1.ru_utime - r0.ru_utime) / n * 1e6,
        "kernel": (r1.ru_stime - r0.ru_stime) / n * 1e6,
    }
    for k, v in per.items():
        record_property(f"us_per_exit_{k}", round(v, 2))
    print(f"\n{mode} mode, {n} port-I/O exits, us per exit: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items()))
