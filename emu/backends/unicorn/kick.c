/* A native UC_HOOK_BLOCK callback that turns a stop request from another thread into a stop at
 * the start of the next translation block.
 *
 * Why: uc_emu_stop() called while guest code runs takes effect at Unicorn's next exit check,
 * and Unicorn emits one after every guest load and store.  Leaving there rewinds the PC to the
 * start of the current instruction, so a read-modify-write such as `inc [mem]` whose store had
 * already happened runs a second time on resume (measured: 309 extra increments in 616 stops).
 * The block hook runs just before the check at the start of a block, where no instruction of
 * the block has run yet, so a stop issued there is exact.  In C because a Python block hook
 * would cost most of Unicorn's speed. */
#include <stdint.h>

/* The same hook keeps the last EMU_TRACE_LEN blocks the guest started, for fault reports ("the
 * last N instructions executed"): one store per block, where a Python hook would cost 10-50x.
 * A block re-entered right after itself (a `rep` string instruction, a polling loop) only bumps
 * the repeat count of its entry, so loops do not push the history out of the ring. */
#define EMU_TRACE_LEN 256   /* a power of two */

struct emu_trace_entry {
    uint64_t address;       /* linear address of the block's first instruction */
    uint64_t repeat;        /* times it ran back to back (1 = once) */
    uint32_t size;          /* bytes of code in the block */
    uint32_t hflags;        /* QEMU's env->hflags at block start (CS32/CS64 give the mode) */
};

struct emu_kick {
    int requested;          /* set by any thread; taken by the hook */
    uint64_t taken;         /* stops the hook has issued */
    int (*stop)(void *uc);  /* uc_emu_stop from the loaded libunicorn */
    const uint32_t *hflags; /* &env->hflags inside the engine, or NULL when it was not found */
    uint64_t trace_count;   /* entries ever written; the newest is trace[(count - 1) % LEN] */
    struct emu_trace_entry trace[EMU_TRACE_LEN];
    /* Virtual time (--deterministic): guest time is the code executed, EMU_BYTES_PER_NS bytes of
     * started blocks per nanosecond, plus the time skipped while halted; never the host's. */
    uint64_t code_bytes;    /* bytes of code in the blocks started so far */
    uint64_t stop_at_bytes; /* stop before a block would start at or past this (a timer deadline) */
    uint64_t idle_ns;       /* virtual time skipped in hlt (written by Python) */
    uint64_t tsc_khz;       /* rate of the virtual TSC */
    uint64_t *regs;         /* env->regs[] (RAX at 0, RDX at 2), for rdtsc; NULL: not found */
};

#define EMU_BYTES_PER_NS 4

void emu_kick_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct emu_kick *kick = user_data;
    struct emu_trace_entry *last;
    uint32_t hflags;
    if (__atomic_exchange_n(&kick->requested, 0, __ATOMIC_ACQ_REL)) {
        kick->taken++;
        kick->stop(uc);
        return;  /* the block does not run now; it is recorded when it does */
    }
    if (kick->code_bytes >= kick->stop_at_bytes) {
        kick->stop_at_bytes = UINT64_MAX;  /* once: the machine sets the next deadline */
        kick->taken++;
        kick->stop(uc);
        return;
    }
    kick->code_bytes += size;
    hflags = kick->hflags ? *kick->hflags : 0;
    last = &kick->trace[(kick->trace_count - 1) % EMU_TRACE_LEN];
    if (kick->trace_count && last->address == address && last->size == size && last->hflags == hflags) {
        last->repeat++;
        return;
    }
    last = &kick->trace[kick->trace_count % EMU_TRACE_LEN];
    last->address = address;
    last->repeat = 1;
    last->size = size;
    last->hflags = hflags;
    kick->trace_count++;
}

/* rdtsc (UC_HOOK_INSN) under virtual time: the TSC counts virtual nanoseconds at tsc_khz instead
 * of returning the host's TSC. Returns 1: Unicorn skips its own rdtsc. */
int emu_rdtsc_hook(void *uc, void *user_data)
{
    struct emu_kick *kick = user_data;
    unsigned __int128 ns = kick->code_bytes / EMU_BYTES_PER_NS + kick->idle_ns;
    uint64_t tsc = (uint64_t)(ns * kick->tsc_khz / 1000000u);
    (void)uc;
    if (!kick->regs)
        return 0;
    kick->regs[0] = (uint32_t)tsc;
    kick->regs[2] = tsc >> 32;
    return 1;
}

/* The host's TSC, which Unicorn's rdtsc returns outside virtual time: kvmclock pairs it with the
 * host clock. */
uint64_t emu_host_rdtsc(void)
{
    return __builtin_ia32_rdtsc();
}
