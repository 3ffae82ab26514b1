"""cffi builder for emu.backends.unicorn._kick (built by `pip install`, see setup.py): the native
block hook in kick.c that makes a stop requested from another thread exact."""

from pathlib import Path

from cffi import FFI

# Mirrors kick.c; cffi checks the struct against the C compiler's layout.
DECLARATIONS = """
struct emu_kick { int requested; uint64_t taken; int (*stop)(void *uc); };
void emu_kick_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data);
"""

ffi = FFI()
ffi.cdef(DECLARATIONS)
ffi.set_source("emu.backends.unicorn._kick", (Path(__file__).parent / "kick.c").read_text())

if __name__ == "__main__":
    ffi.compile(verbose=True)
