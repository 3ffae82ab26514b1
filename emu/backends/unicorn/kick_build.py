"""cffi builder for emu.backends.unicorn._kick (built by `pip install`, see setup.py): the native
block hook in kick.c that makes a stop requested from another thread exact."""

from pathlib import Path

from cffi import FFI

# Mirrors kick.c; cffi checks the struct against the C compiler's layout.
DECLARATIONS = """
#define EMU_TRACE_LEN 256
struct emu_trace_entry { uint64_t address; uint64_t repeat; uint32_t size; uint32_t hflags; };
struct emu_kick {
    int requested; uint64_t taken; int (*stop)(void *uc);
    const uint32_t *hflags; uint64_t trace_count; struct emu_trace_entry trace[EMU_TRACE_LEN];
    uint64_t code_bytes; uint64_t stop_at_bytes; uint64_t idle_ns; uint64_t tsc_khz; uint64_t *regs;
};
#define EMU_BYTES_PER_NS 4
void emu_kick_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
int emu_rdtsc_hook(void *uc, void *user_data);
uint64_t emu_host_rdtsc(void);
"""

ffi = FFI()
ffi.cdef(DECLARATIONS)
ffi.set_source("emu.backends.unicorn._kick", (Path(__file__).parent / "kick.c").read_text())

if __name__ == "__main__":
    ffi.compile(verbose=True)
