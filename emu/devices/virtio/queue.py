"""Split virtqueues (virtio 1.x spec 2.7): the device side of the descriptor table, the available
ring and the used ring, with every guest-supplied index, address and length validated.

Anything the driver writes is untrusted: a bad ring address, an out-of-range descriptor index, a
descriptor outside guest RAM, a loop, a malformed indirect table or an impossible avail index
raises VirtqueueError, which the device core turns into NEEDS_RESET. Guest memory is only ever
touched through GuestMemory's bounds-checked views.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.devices.virtio.constants import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
)
from emu.memory import GuestMemory

DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")  # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len
MAX_CHAIN_BYTES = 1 << 32  # a chain's total length must fit the used element's u32


class VirtqueueError(Exception):
    """The driver put something invalid in a virtqueue (the device must be reset)."""


def vring_need_event(event: int, new: int, old: int) -> bool:
    """Event-index rule (spec 2.7.10): notify when `event` lies in the window (old, new]."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


@dataclass
class Chain:
    """One descriptor chain popped from the available ring: the device-readable buffers, then
    the device-writable ones, as windows on guest RAM."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """`size` bytes (default: all) of the readable part starting at `offset`."""
        out = bytearray()
        want = self.readable_len - offset if size is None else size
        for v in self.readable:
            if want <= 0:
                break
            if offset >= len(v):
                offset -= len(v)
                continue
            part = v[offset : offset + want]
            out += part
            want -= len(part)
            offset = 0
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Scatter `data` into the writable part from `offset`; returns the bytes stored (fewer
        than len(data) when the buffers end first)."""
        src = memoryview(data)
        done = 0
        for v in self.writable:
            if done == len(src):
                break
            if offset >= len(v):
                offset -= len(v)
                continue
            n = min(len(v) - offset, len(src) - done)
            v[offset : offset + n] = src[done : done + n]
            done += n
            offset = 0
        return done


class Virtqueue:
    """The device's view of one split virtqueue.

    The transport fills in size and the three ring addresses, then calls `enable()`; the device
    calls `pop()` for each new chain and `push()` when it is done with one, and `need_interrupt()`
    after a batch to honour the driver's interrupt suppression (flag or event index).
    """

    def __init__(self, memory: GuestMemory, index: int, max_size: int) -> None:
        self.memory = memory
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size  # spec: QueueNum reads back the maximum until the driver sets it
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.legacy_align = 4096  # legacy QueueAlign: where the used ring starts (Linux writes 4096)
        self.ready = False
        self.indirect = False
        self.event_idx = False
        self.last_avail = 0  # next avail ring slot the device will read
        self.used_idx = 0  # next used ring slot the device will write
        self._signalled_used = 0  # used_idx when the driver was last told (or chose not to be)

    # -- setup ----------------------------------------------------------------------------------
    def place_legacy(self, addr: int) -> None:
        """The legacy layout (virtio 0.9.5, both legacy transports): the descriptor table at
        `addr`, the available ring right after it, the used ring at the next alignment boundary."""
        n, align = self.size, self.legacy_align
        self.desc_addr = addr
        self.avail_addr = addr + DESC_SIZE * n
        self.used_addr = (self.avail_addr + 6 + 2 * n + align - 1) & ~(align - 1)

    def _in_ram(self, addr: int, size: int) -> bool:
        region = self.memory.region_of(addr, max(size, 1)) if addr >= 0 else None
        return region is not None and not region.readonly

    def enable(self, indirect: bool, event_idx: bool) -> None:
        """Check the layout the driver gave and start using the queue (QueueReady=1, or a
        legacy QueuePFN write)."""
        n = self.size
        if n == 0 or n & (n - 1) or n > self.max_size:
            raise VirtqueueError(f"queue {self.index}: size {n} is not a power of two up to {self.max_size}")
        rings = (
            ("descriptor table", self.desc_addr, DESC_SIZE * n, 16),
            ("available ring", self.avail_addr, 6 + 2 * n, 2),
            ("used ring", self.used_addr, 6 + 8 * n, 4),
        )
        for what, addr, size, align in rings:
            if addr % align:
                raise VirtqueueError(f"queue {self.index}: {what} at {addr:#x} is not {align}-byte aligned")
            if not self._in_ram(addr, size):
                raise VirtqueueError(f"queue {self.index}: {what} {addr:#x}+{size:#x} is outside guest RAM")
        self.indirect = indirect
        self.event_idx = event_idx
        self.last_avail = self.used_idx = self._signalled_used = 0
        self.ready = True

    # -- rings ----------------------------------------------------------------------------------
    def avail_idx(self) -> int:
        return self.memory.read_u16(self.avail_addr + 2)

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken yet."""
        n = (self.avail_idx() - self.last_avail) & 0xFFFF
        if n > self.size:
            raise VirtqueueError(
                f"queue {self.index}: avail idx moved {n} entries past the device's, more than the size {self.size}"
            )
        return n

    def pop(self) -> Chain | None:
        """The next available chain, validated, or None when the ring is empty."""
        if not self.pending():
            return None
        slot = self.last_avail % self.size
        head = self.memory.read_u16(self.avail_addr + 4 + 2 * slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:  # avail_event: ask to be notified as soon as anything new comes
            self.memory.write_u16(self.used_addr + 4 + 8 * self.size, self.last_avail)
        return self._walk(head)

    def _read_desc(self, table: int, i: int) -> tuple[int, int, int, int]:
        return _DESC.unpack(self.memory.view(table + DESC_SIZE * i, DESC_SIZE))

    def _walk(self, head: int) -> Chain:
        if head >= self.size:
            raise VirtqueueError(f"queue {self.index}: head descriptor {head} is beyond the size {self.size}")
        chain = Chain(head)
        table, limit, i = self.desc_addr, self.size, head
        seen = total = 0
        in_indirect = False
        while True:
            addr, length, flags, nxt = self._read_desc(table, i)
            seen += 1
            if seen > limit:
                raise VirtqueueError(f"queue {self.index}: chain from {head} loops or is longer than {limit}")
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise VirtqueueError(f"queue {self.index}: indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if in_indirect:
                    raise VirtqueueError(f"queue {self.index}: indirect descriptor inside an indirect table")
                if flags & DESC_F_NEXT:
                    raise VirtqueueError(f"queue {self.index}: indirect descriptor with NEXT set")
                if length == 0 or length % DESC_SIZE or not self._in_ram(addr, length) or addr % 16:
                    raise VirtqueueError(f"queue {self.index}: bad indirect table {addr:#x}+{length:#x}")
                table, limit, i = addr, length // DESC_SIZE, 0
                seen = 0
                in_indirect = True
                continue
            if not self._in_ram(addr, length):
                raise VirtqueueError(f"queue {self.index}: buffer {addr:#x}+{length:#x} is outside guest RAM")
            total += length
            if total >= MAX_CHAIN_BYTES:
                raise VirtqueueError(f"queue {self.index}: chain from {head} is 4 GiB or longer")
            view = self.memory.view(addr, length)
            if flags & DESC_F_WRITE:
                chain.writable.append(view)
            elif chain.writable:
                raise VirtqueueError(f"queue {self.index}: device-readable buffer after a writable one")
            else:
                chain.readable.append(view)
            if not flags & DESC_F_NEXT:
                return chain
            if nxt >= limit:
                raise VirtqueueError(f"queue {self.index}: next descriptor {nxt} is beyond the table ({limit})")
            i = nxt

    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver with `written` bytes stored in its writable part."""
        slot = self.used_idx % self.size
        _USED_ELEM.pack_into(self.memory.view(self.used_addr + 4 + 8 * slot, 8), 0, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.memory.write_u16(self.used_addr + 2, self.used_idx)

    def need_interrupt(self) -> bool:
        """After pushing a batch: does the driver want an interrupt for it?"""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            used_event = self.memory.read_u16(self.avail_addr + 4 + 2 * self.size)
            return vring_need_event(used_event, new, old)
        return not self.memory.read_u16(self.avail_addr) & AVAIL_F_NO_INTERRUPT
