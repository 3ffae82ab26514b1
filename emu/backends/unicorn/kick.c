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

struct emu_kick {
    int requested;          /* set by any thread; taken by the hook */
    uint64_t taken;         /* stops the hook has issued */
    int (*stop)(void *uc);  /* uc_emu_stop from the loaded libunicorn */
};

void emu_kick_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct emu_kick *kick = user_data;
    (void)address;
    (void)size;
    if (__atomic_exchange_n(&kick->requested, 0, __ATOMIC_ACQ_REL)) {
        kick->taken++;
        kick->stop(uc);
    }
}
