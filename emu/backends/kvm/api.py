"""The KVM userspace ABI for x86-64: struct layouts (cffi, ABI mode), ioctl numbers, constants.

Layouts follow linux/include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h. The ioctl
numbers are computed from the struct sizes the way the kernel's _IO/_IOR/_IOW/_IOWR macros do;
tests/test_kvm_backend.py checks both against the host's installed headers when they exist.
"""

from __future__ import annotations

import os

from cffi import FFI

ffi = FFI()
ffi.cdef(
    """
    struct kvm_regs {
        uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
        uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
        uint64_t rip, rflags;
    };

    struct kvm_segment {
        uint64_t base;
        uint32_t limit;
        uint16_t selector;
        uint8_t type;
        uint8_t present, dpl, db, s, l, g, avl;
        uint8_t unusable;
        uint8_t padding;
    };

    struct kvm_dtable {
        uint64_t base;
        uint16_t limit;
        uint16_t padding[3];
    };

    struct kvm_sregs {
        struct kvm_segment cs, ds, es, fs, gs, ss;
        struct kvm_segment tr, ldt;
        struct kvm_dtable gdt, idt;
        uint64_t cr0, cr2, cr3, cr4, cr8;
        uint64_t efer;
        uint64_t apic_base;
        uint64_t interrupt_bitmap[4];   /* (KVM_NR_INTERRUPTS + 63) / 64 */
    };

    struct kvm_msr_entry {
        uint32_t index;
        uint32_t reserved;
        uint64_t data;
    };

    struct kvm_msrs {
        uint32_t nmsrs;
        uint32_t pad;
        struct kvm_msr_entry entries[];
    };

    struct kvm_fpu {
        uint8_t fpr[8][16];
        uint16_t fcw;
        uint16_t fsw;
        uint8_t ftwx;
        uint8_t pad1;
        uint16_t last_opcode;
        uint64_t last_ip;
        uint64_t last_dp;
        uint8_t xmm[16][16];
        uint32_t mxcsr;
        uint32_t pad2;
    };

    struct kvm_debugregs {
        uint64_t db[4];
        uint64_t dr6;
        uint64_t dr7;
        uint64_t flags;
        uint64_t reserved[9];
    };

    struct kvm_userspace_memory_region {
        uint32_t slot;
        uint32_t flags;
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
    };

    struct kvm_irq_level {
        union {
            uint32_t irq;
            int32_t status;
        };
        uint32_t level;
    };

    struct kvm_pit_config {
        uint32_t flags;
        uint32_t pad[15];
    };

    struct kvm_cpuid_entry2 {
        uint32_t function;
        uint32_t index;
        uint32_t flags;
        uint32_t eax, ebx, ecx, edx;
        uint32_t padding[3];
    };

    struct kvm_cpuid2 {
        uint32_t nent;
        uint32_t padding;
        struct kvm_cpuid_entry2 entries[];
    };

    struct kvm_mp_state {
        uint32_t mp_state;
    };

    struct kvm_lapic_state {
        char regs[1024];
    };

    struct kvm_irqchip {
        uint32_t chip_id;          /* 0: master PIC, 1: slave PIC, 2: IOAPIC */
        uint32_t pad;
        uint64_t chip[64];         /* union of kvm_pic_state / kvm_ioapic_state, 512 bytes */
    };

    struct kvm_pit_channel_state {
        uint32_t count;
        uint16_t latched_count;
        uint8_t count_latched, status_latched, status, read_state, write_state, write_latch;
        uint8_t rw_mode, mode, bcd, gate;
        int64_t count_load_time;
    };

    struct kvm_pit_state2 {
        struct kvm_pit_channel_state channels[3];
        uint32_t flags;
        uint32_t reserved[9];
    };

    struct kvm_guest_debug_arch {
        uint64_t debugreg[8];
    };

    struct kvm_guest_debug {
        uint32_t control;
        uint32_t pad;
        struct kvm_guest_debug_arch arch;
    };

    struct kvm_debug_exit_arch {
        uint32_t exception;
        uint32_t pad;
        uint64_t pc;
        uint64_t dr6;
        uint64_t dr7;
    };

    /* KVM_GET_XSAVE2 may return more than these 4 KiB (size from KVM_CAP_XSAVE2). */
    struct kvm_xsave {
        uint32_t region[1024];
    };

    struct kvm_signal_mask {
        uint32_t len;
        uint8_t sigset[];
    };

    /* The page mmapped from the vCPU fd. Only the exit-union members emu reads are spelled out;
       `padding` fixes the union at its ABI size of 256 bytes. The sync-regs area follows. */
    struct kvm_run {
        uint8_t request_interrupt_window;
        uint8_t immediate_exit;
        uint8_t padding1[6];
        uint32_t exit_reason;
        uint8_t ready_for_interrupt_injection;
        uint8_t if_flag;
        uint16_t flags;
        uint64_t cr8;
        uint64_t apic_base;
        union {
            struct { uint64_t hardware_exit_reason; } hw;
            struct { uint64_t hardware_entry_failure_reason; uint32_t cpu; } fail_entry;
            struct { uint32_t exception; uint32_t error_code; } ex;
            struct {
                uint8_t direction;
                uint8_t size;
                uint16_t port;
                uint32_t count;
                uint64_t data_offset;
            } io;
            struct { struct kvm_debug_exit_arch arch; } debug;
            struct {
                uint64_t phys_addr;
                uint8_t data[8];
                uint32_t len;
                uint8_t is_write;
            } mmio;
            struct { uint32_t suberror; uint32_t ndata; uint64_t data[16]; } internal;
            char padding[256];
        };
        uint64_t kvm_valid_regs;
        uint64_t kvm_dirty_regs;
    };

    /* Eventfds (emu/backends/kvm/eventfds.py): a guest write that signals an eventfd inside
       KVM (no exit to userspace), and an eventfd that raises a GSI. */
    struct kvm_ioeventfd {
        uint64_t datamatch;
        uint64_t addr;
        uint32_t len;
        int32_t fd;
        uint32_t flags;
        uint8_t pad[36];
    };

    struct kvm_irqfd {
        uint32_t fd;
        uint32_t gsi;
        uint32_t flags;
        uint32_t resamplefd;
        uint8_t pad[16];
    };

    int ioctl(int fd, unsigned long request, ...);
    """
)

libc = ffi.dlopen(None)

KVM_API_VERSION = 12
KVMIO = 0xAE

# asm-generic/ioctl.h: dir(2 bits) | size(14) | type(8) | nr(8).
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int, size: int) -> int:
    assert size < (1 << 14), size
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ, nr, ffi.sizeof(ctype))


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_IOC_WRITE, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ffi.sizeof(ctype))


# -- ioctls on /dev/kvm -------------------------------------------------------------------------
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")
# -- ioctls on a VM fd --------------------------------------------------------------------------
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "uint64_t")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, "struct kvm_irq_level")
KVM_GET_IRQCHIP = _iowr(0x62, "struct kvm_irqchip")
KVM_SET_IRQCHIP = _ior(0x63, "struct kvm_irqchip")  # (sic: the kernel declares it _IOR)
KVM_IRQFD = _iow(0x76, "struct kvm_irqfd")
KVM_CREATE_PIT2 = _iow(0x77, "struct kvm_pit_config")
KVM_IOEVENTFD = _iow(0x79, "struct kvm_ioeventfd")
KVM_GET_PIT2 = _ior(0x9F, "struct kvm_pit_state2")
KVM_SET_PIT2 = _iow(0xA0, "struct kvm_pit_state2")
# -- ioctls on a vCPU fd ------------------------------------------------------------------------
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_SET_SIGNAL_MASK = _iow(0x8B, "struct kvm_signal_mask")
KVM_GET_FPU = _ior(0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(0x8D, "struct kvm_fpu")
KVM_GET_LAPIC = _ior(0x8E, "struct kvm_lapic_state")
KVM_SET_LAPIC = _iow(0x8F, "struct kvm_lapic_state")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
KVM_SET_GUEST_DEBUG = _iow(0x9B, "struct kvm_guest_debug")
KVM_GET_DEBUGREGS = _ior(0xA1, "struct kvm_debugregs")
KVM_SET_DEBUGREGS = _iow(0xA2, "struct kvm_debugregs")
KVM_GET_XSAVE = _ior(0xA4, "struct kvm_xsave")
KVM_SET_XSAVE = _iow(0xA5, "struct kvm_xsave")
KVM_GET_XSAVE2 = _ior(0xCF, "struct kvm_xsave")

# -- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9  # recommended maximum vCPUs per VM
KVM_CAP_MP_STATE = 14
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_DEBUGREGS = 50
KVM_CAP_MAX_VCPUS = 66  # hard maximum vCPUs per VM
KVM_CAP_XSAVE = 55
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SET_GUEST_DEBUG2 = 195  # returns the supported KVM_GUESTDBG_* mask
KVM_CAP_XSAVE2 = 208  # returns the size of the XSAVE buffer (on the VM fd)

# -- exit reasons (kvm_run.exit_reason) ---------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_NOTIFY = 37

EXIT_NAMES: dict[int, str] = {
    value: name.removeprefix("KVM_EXIT_")
    for name, value in globals().items()
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
INTERNAL_ERROR_NAMES = {
    KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
    KVM_INTERNAL_ERROR_SIMUL_EX: "simultaneous exceptions",
    KVM_INTERNAL_ERROR_DELIVERY_EV: "unexpected exit while delivering an event",
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}

# -- flags and states ---------------------------------------------------------------------------
KVM_MEM_READONLY = 1 << 1

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1  # level-triggered: resamplefd is signalled when the guest EOIs

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1  # an AP at power-on: waits for INIT
KVM_MP_STATE_INIT_RECEIVED = 2  # waits for STARTUP (SIPI)
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4  # a STARTUP is about to start it

KVM_GUESTDBG_ENABLE = 0x0000_0001
KVM_GUESTDBG_SINGLESTEP = 0x0000_0002
KVM_GUESTDBG_USE_HW_BP = 0x0002_0000
KVM_GUESTDBG_BLOCKIRQ = 0x0010_0000  # no interrupt injection while single-stepping

KVM_MAX_CPUID_ENTRIES = 256  # first guess for KVM_GET_SUPPORTED_CPUID; grown on E2BIG

# The kernel's sigset_t is 64 bits on x86-64 (KVM_SET_SIGNAL_MASK wants exactly that length).
KERNEL_SIGSET_BYTES = 8


class KvmError(OSError):
    """An ioctl failed; carries the ioctl's name and errno."""


def ioctl(fd: int, request: int, arg: object = 0, *, name: str = "") -> int:
    """ioctl(2) with the GIL released; `arg` is an int or a cffi pointer. Raises KvmError."""
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    ret: int = libc.ioctl(fd, request, arg)
    if ret < 0:
        err = ffi.errno
        raise KvmError(err, f"{name or hex(request)} failed: {os.strerror(err)}")
    return ret
