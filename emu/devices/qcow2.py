"""qcow2 images, versions 2 and 3 (QEMU's docs/interop/qcow2.txt), as byte-addressed Storage.

Guest offsets map through the L1 table (kept in memory) and L2 tables (one cluster each, cached)
to host clusters. Unallocated clusters read from the backing file (raw or qcow2, opened
read-only, a chain of them) or as zeros; v3 zero clusters read as zeros; compressed clusters are
raw deflate streams.

Writes go in place to clusters this image owns (the COPIED flag: refcount exactly one). Anything
else (unallocated, zero, compressed or shared) gets a new cluster holding the cluster's current
contents with the write applied, and the old cluster's references are dropped afterwards. All
metadata is written through (no dirty bit, no lazy refcounts): the refcount first, then the data,
then the L2/L1 entry, so emu stopping mid-write leaks a cluster at worst and never leaves a table
pointing at unreferenced data (a host crash may reorder unsynced writes; flush() fsyncs).

Not supported (refused with one line when opening): encryption, external data files, extended
L2 entries, non-zlib compression; writing to an image with internal snapshots or with the dirty
or corrupt bit set (reading them is fine). Internal snapshots and bitmaps are never touched, but
opening for writing clears the autoclear bits, as the spec asks of software that does not update
bitmaps (QEMU then ignores the stale bitmaps).
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path

from emu.config import DiskFormat
from emu.devices.imagefile import QCOW2_MAGIC, RawFile, Storage, open_fd, probe
from emu.errors import EmuError

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # bytes 0..71: every version has these
_HEADER_V3 = struct.Struct(">QQQII")  # bytes 72..103: feature bits, refcount_order, header_length
_EXTENSION = struct.Struct(">II")  # type, length
_ENTRY = struct.Struct(">Q")
_REFTABLE_AT = 48  # header offset of refcount_table_offset (u64) and refcount_table_clusters (u32)
_AUTOCLEAR_AT = 88

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
_FEATURE_NAME = 48  # bytes per feature name table entry: type, bit, 46-byte name

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9..55: a host offset in an L1/L2 entry
COPIED = 1 << 63  # the cluster's refcount is exactly one: it may be written in place
COMPRESSED = 1 << 62
ZERO = 1  # v3: the cluster reads as zeros

MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # 512 B .. 2 MiB, QEMU's range
MAX_L1_BYTES = 32 << 20  # QEMU's limits, which also bound what a bad header makes us allocate
MAX_REFTABLE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023
MAX_CHAIN = 16  # backing files below the top image: more is surely a loop
L2_CACHE_BYTES = 16 << 20
_SWAP = sys.byteorder == "little"  # table entries are big-endian; array("Q") is native


class Incompatible(IntFlag):
    DIRTY = 1 << 0
    CORRUPT = 1 << 1
    EXTERNAL_DATA = 1 << 2
    COMPRESSION_TYPE = 1 << 3
    EXTENDED_L2 = 1 << 4


_FEATURE_LABELS = {
    Incompatible.EXTERNAL_DATA: "external data file",
    Incompatible.COMPRESSION_TYPE: "non-zlib compression",
    Incompatible.EXTENDED_L2: "extended L2 entries",
}


class CorruptImage(EmuError, OSError):
    """Metadata that points outside the file or cannot be: at open an EmuError (one line); found
    during I/O also an OSError, so a virtio-blk request fails with an I/O error, not a crash."""


@dataclass
class Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    reftable_offset: int
    reftable_clusters: int
    snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4  # v2: always 16-bit refcounts
    length: int = _HEADER_V2.size
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)  # (type, bit) -> name


def _entries(raw: bytes) -> array[int]:
    table = array("Q", raw)
    if _SWAP:
        table.byteswap()
    return table


def _entries_bytes(table: array[int]) -> bytes:
    out = array("Q", table)
    if _SWAP:
        out.byteswap()
    return out.tobytes()


class Qcow2Image:
    """One qcow2 file (and its backing chain). Takes ownership of `fd`, closing it on failure;
    `what` starts every error message ("disk x.qcow2")."""

    format = DiskFormat.QCOW2

    def __init__(self, fd: int, path: Path, writable: bool, what: str, depth: int = 0) -> None:
        self._fd = fd
        self.path = path
        self.what = what
        self.writable = writable
        self.backing: Storage | None = None
        self._l2_cache: OrderedDict[int, array[int]] = OrderedDict()
        self._refblocks: dict[int, bytearray] = {}
        self._reftable: array[int] = array("Q")
        self._free_hint = 0  # where the search for a free cluster starts
        self._inflated: tuple[int, bytes] | None = None  # the last compressed cluster read
        # Requests may come from a vCPU and a device thread; even reads update the caches.
        self._lock = threading.Lock()
        try:
            self._end = os.fstat(fd).st_size
            self.header = h = self._read_header()
            self._check_header(h)
            self.version = h.version
            self.size = h.size
            self._bits = h.cluster_bits
            self._cs = 1 << h.cluster_bits
            self._l2_bits = h.cluster_bits - 3
            self._l1 = self._load_l1(h)
            self._rc_bits = 1 << h.refcount_order
            self._rc_max = (1 << self._rc_bits) - 1
            self._rc_per_block = self._cs * 8 // self._rc_bits
            self._reftable_offset = h.reftable_offset
            if writable:
                self._reftable = self._load_reftable(h)
            self._l2_cache_max = max(4, L2_CACHE_BYTES // self._cs)
            # The compressed-cluster descriptor: host offset below bit x, extra sectors above.
            self._cshift = 62 - (h.cluster_bits - 8)
            if h.backing_offset:
                self.backing = self._open_backing(h, depth)
            if writable and h.autoclear:  # last: an image that fails to open stays untouched
                self._pwrite(_ENTRY.pack(0), _AUTOCLEAR_AT)
        except BaseException:
            self.close()
            raise

    # -- opening ----------------------------------------------------------------------------------
    def _fail(self, why: str) -> CorruptImage:
        return CorruptImage(f"{self.what}: {why}")

    def _read_header(self) -> Header:
        raw = os.pread(self._fd, _HEADER_V2.size, 0)
        if raw[:4] != QCOW2_MAGIC:
            raise self._fail("not a qcow2 image (bad magic)")
        if len(raw) < _HEADER_V2.size:
            raise self._fail("truncated qcow2 header")
        h = Header(*_HEADER_V2.unpack(raw)[1:])
        if h.version not in (2, 3):
            raise EmuError(f"{self.what}: qcow2 version {h.version} is not supported (2 and 3 are)")
        if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
            raise self._fail(f"cluster size 2^{h.cluster_bits} is outside 512 B..2 MiB")
        cs = 1 << h.cluster_bits
        first = os.pread(self._fd, cs, 0)  # the header and its extensions live in cluster 0
        if h.version == 3:
            if len(first) < _HEADER_V2.size + _HEADER_V3.size:
                raise self._fail("truncated qcow2 header")
            v3 = _HEADER_V3.unpack_from(first, _HEADER_V2.size)
            h.incompatible, h.compatible, h.autoclear, h.refcount_order, h.length = v3
            if h.length < _HEADER_V2.size + _HEADER_V3.size or h.length % 8 or h.length > len(first):
                raise self._fail(f"bad header length {h.length}")
        self._read_extensions(h, first)
        return h

    def _read_extensions(self, h: Header, first: bytes) -> None:
        pos = h.length
        while pos + _EXTENSION.size <= len(first):
            kind, length = _EXTENSION.unpack_from(first, pos)
            pos += _EXTENSION.size
            if kind == EXT_END:
                return
            if pos + length > len(first):
                raise self._fail("header extension beyond the first cluster")
            data = first[pos : pos + length]
            if kind == EXT_BACKING_FORMAT:
                h.backing_format = data.decode("ascii", "replace")
            elif kind == EXT_FEATURE_NAMES:
                for at in range(0, length - _FEATURE_NAME + 1, _FEATURE_NAME):
                    name = data[at + 2 : at + _FEATURE_NAME].rstrip(b"\0").decode("ascii", "replace")
                    h.feature_names[(data[at], data[at + 1])] = name
            pos += (length + 7) & ~7

    def _check_header(self, h: Header) -> None:
        cs = 1 << h.cluster_bits
        if h.crypt_method:
            raise EmuError(f"{self.what}: encrypted qcow2 images are not supported")
        # int(): inverting an IntFlag keeps only the bits it defines, hiding unknown ones
        unsupported = h.incompatible & ~int(Incompatible.DIRTY | Incompatible.CORRUPT)
        if unsupported:
            names = []
            for bit in range(64):
                if unsupported >> bit & 1:
                    label = _FEATURE_LABELS.get(Incompatible(1 << bit)) if bit < 5 else None
                    names.append(label or h.feature_names.get((0, bit)) or f"bit {bit}")
            raise EmuError(f"{self.what}: unsupported qcow2 incompatible features: {', '.join(names)}")
        if self.writable:
            hint = " (open it with ,ro or use --snapshot)"
            repair = "`qemu-img check -r all` repairs it"
            if h.incompatible & Incompatible.CORRUPT:
                raise EmuError(f"{self.what}: the image is marked corrupt; {repair}{hint}")
            if h.incompatible & Incompatible.DIRTY:
                raise EmuError(f"{self.what}: the image is dirty (lazy refcounts); {repair}{hint}")
            if h.snapshots:
                raise EmuError(f"{self.what}: writing to a qcow2 image with internal snapshots is not supported{hint}")
        if h.refcount_order > 6:
            raise self._fail(f"refcount order {h.refcount_order} (at most 6: 64-bit refcounts)")
        if h.l1_size * 8 > MAX_L1_BYTES:
            raise self._fail(f"L1 table of {h.l1_size} entries is too large")
        if h.l1_offset % cs or h.l1_offset + h.l1_size * 8 > self._end:
            raise self._fail(f"L1 table at {h.l1_offset:#x} is beyond the file or misaligned")
        if h.l1_size << (2 * h.cluster_bits - 3) < h.size:
            raise self._fail(f"L1 table of {h.l1_size} entries is too small for the disk size")
        reftable_bytes = h.reftable_clusters * cs
        if reftable_bytes > MAX_REFTABLE_BYTES or not reftable_bytes:
            raise self._fail(f"refcount table of {h.reftable_clusters} clusters")
        if h.reftable_offset % cs or h.reftable_offset + reftable_bytes > self._end:
            raise self._fail(f"refcount table at {h.reftable_offset:#x} is beyond the file or misaligned")

    def _load_l1(self, h: Header) -> array[int]:
        l1 = _entries(os.pread(self._fd, h.l1_size * 8, h.l1_offset))
        for i, entry in enumerate(l1):
            off = entry & OFFSET_MASK
            if off and (off % self._cs or off + self._cs > self._end):
                raise self._fail(f"L1 entry {i}: L2 table at {off:#x} is beyond the file or misaligned")
        return l1

    def _load_reftable(self, h: Header) -> array[int]:
        table = _entries(os.pread(self._fd, h.reftable_clusters * self._cs, h.reftable_offset))
        for i, off in enumerate(table):
            if off and (off % self._cs or off + self._cs > self._end):
                raise self._fail(f"refcount table entry {i}: block at {off:#x} is beyond the file or misaligned")
        return table

    def _open_backing(self, h: Header, depth: int) -> Storage:
        if h.backing_size > MAX_BACKING_NAME or h.backing_offset + h.backing_size > self._end:
            raise self._fail("backing file name beyond the file")
        name = os.fsdecode(os.pread(self._fd, h.backing_size, h.backing_offset))
        path = self.path.parent / name  # an absolute name stays as it is
        what = f"{self.what}: backing file {path}"
        if depth >= MAX_CHAIN:
            raise EmuError(f"{what}: more than {MAX_CHAIN} backing files (a loop?)")
        fd = open_fd(path, False, what)  # a backing file is only ever read
        try:
            fmt = probe(fd).value if h.backing_format is None else h.backing_format
        except OSError as e:
            os.close(fd)
            raise EmuError(f"{what}: {e.strerror}") from None
        if fmt == DiskFormat.QCOW2.value:
            return Qcow2Image(fd, path, False, what, depth + 1)
        if fmt == DiskFormat.RAW.value:
            return RawFile(fd)
        os.close(fd)
        raise EmuError(f"{what}: backing format {fmt!r} is not supported (raw or qcow2)")

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
            self.backing = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        if self.writable:
            os.fsync(self._fd)

    # -- host file access -------------------------------------------------------------------------
    def _pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        os.pwrite(self._fd, data, offset)
        self._end = max(self._end, offset + len(data))

    def _data_cluster(self, entry: int, what: str) -> int:
        """The host offset of a standard cluster's entry, checked to lie in the file."""
        host = entry & OFFSET_MASK
        if not host or host % self._cs or host >= self._end:  # cluster 0 is the header
            raise self._fail(f"{what}: data cluster at {host:#x} is beyond the file or misaligned")
        return host

    # -- cluster mapping --------------------------------------------------------------------------
    def _l2_table(self, offset: int) -> array[int]:
        table = self._l2_cache.get(offset)
        if table is None:
            table = _entries(os.pread(self._fd, self._cs, offset))
            if len(table) != self._cs // 8:
                raise self._fail(f"L2 table at {offset:#x} is beyond the file")
            self._cache_l2(offset, table)
        else:
            self._l2_cache.move_to_end(offset)
        return table

    def _cache_l2(self, offset: int, table: array[int]) -> None:
        self._l2_cache[offset] = table
        if len(self._l2_cache) > self._l2_cache_max:
            self._l2_cache.popitem(last=False)

    def _l2_entry(self, cluster: int) -> int:
        """The L2 entry of guest cluster `cluster` (0: unallocated, also when it has no L2 table)."""
        l1_entry = self._l1[cluster >> self._l2_bits]
        if not l1_entry & OFFSET_MASK:
            return 0
        return self._l2_table(l1_entry & OFFSET_MASK)[cluster & ((1 << self._l2_bits) - 1)]

    def _l2_for_write(self, cluster: int) -> tuple[int, array[int]]:
        """The L2 table that maps guest cluster `cluster`, allocating it if it has none."""
        index = cluster >> self._l2_bits
        offset = self._l1[index] & OFFSET_MASK
        if offset:
            return offset, self._l2_table(offset)
        offset = self._alloc_cluster()
        self._pwrite(bytes(self._cs), offset)  # zeroed before the L1 entry points at it
        self._l1[index] = offset | COPIED
        self._pwrite(_ENTRY.pack(offset | COPIED), self.header.l1_offset + 8 * index)
        table = array("Q", bytes(self._cs))
        self._cache_l2(offset, table)
        return offset, table

    def _set_l2(self, cluster: int, entry: int) -> None:
        offset, table = self._l2_for_write(cluster)
        index = cluster & ((1 << self._l2_bits) - 1)
        table[index] = entry
        self._pwrite(_ENTRY.pack(entry), offset + 8 * index)

    def _is_zero(self, entry: int) -> bool:
        return self.version >= 3 and not entry & COMPRESSED and bool(entry & ZERO)

    def _reads_zero(self, entry: int) -> bool:
        """Does a cluster read as zeros without looking at any data?"""
        unallocated = not entry & (COMPRESSED | OFFSET_MASK)
        return self._is_zero(entry) or (unallocated and self.backing is None)

    def _compressed_span(self, entry: int) -> tuple[int, int]:
        """(host offset, length) of a compressed cluster's data: its sector count covers the
        sectors from the one holding the start, as QEMU counts them."""
        start = entry & ((1 << self._cshift) - 1)
        sectors = ((entry & ~COMPRESSED & ~COPIED) >> self._cshift) + 1
        return start, (start & ~511) + sectors * 512 - start

    def _inflate(self, entry: int) -> bytes:
        if self._inflated is not None and self._inflated[0] == entry:
            return self._inflated[1]
        start, length = self._compressed_span(entry)
        if start >= self._end:
            raise self._fail(f"compressed cluster at {start:#x} is beyond the file")
        raw = os.pread(self._fd, length, start)  # the last sector may be cut short by the end of file
        try:
            data = zlib.decompressobj(-15).decompress(raw, self._cs)  # raw deflate, as QEMU writes it
        except zlib.error as e:
            raise self._fail(f"compressed cluster at {start:#x}: {e}") from None
        if len(data) != self._cs:
            raise self._fail(f"compressed cluster at {start:#x} inflates to {len(data)} bytes")
        self._inflated = (entry, data)
        return data

    def _read_cluster(self, cluster: int, within: int, length: int) -> bytes:
        """`length` bytes of guest cluster `cluster` from byte `within`, as the guest sees them."""
        entry = self._l2_entry(cluster)
        if entry & COMPRESSED:
            return self._inflate(entry)[within : within + length]
        if self._is_zero(entry):
            return bytes(length)
        if not entry & OFFSET_MASK:
            if self.backing is None:
                return bytes(length)
            return self.backing.read_at((cluster << self._bits) + within, length)
        host = self._data_cluster(entry, f"guest cluster {cluster}")
        data = os.pread(self._fd, length, host + within)
        return data if len(data) == length else data.ljust(length, b"\0")

    # -- Storage ----------------------------------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            return self._read(offset, length)

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._write(offset, data)

    def write_zeroes(self, offset: int, length: int) -> None:
        with self._lock:
            self._write_zeroes(offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        end = offset + length
        while offset < end:
            if offset >= self.size:  # a backing file smaller than its overlay
                out += bytes(end - offset)
                break
            within = offset & (self._cs - 1)
            n = min(self._cs - within, end - offset, self.size - offset)
            out += self._read_cluster(offset >> self._bits, within, n)
            offset += n
        return bytes(out)

    def _write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            at = offset + done
            within = at & (self._cs - 1)
            n = min(self._cs - within, len(view) - done)
            self._write_cluster(at >> self._bits, within, view[done : done + n])
            done += n

    def _write_zeroes(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            cluster, within = offset >> self._bits, offset & (self._cs - 1)
            n = min(self._cs - within, end - offset)
            entry = self._l2_entry(cluster)
            # A write to the last cluster that reaches the disk's end covers all the guest sees.
            whole = not within and (n == self._cs or offset + n >= self.size)
            if self._reads_zero(entry):
                pass
            elif whole and self.version >= 3:
                self._set_l2(cluster, ZERO)  # the v3 zero flag: no data cluster needed
                self._release(entry)
            else:
                self._write_cluster(cluster, within, bytes(n))
            offset += n

    def _write_cluster(self, cluster: int, within: int, data: bytes | bytearray | memoryview) -> None:
        entry = self._l2_entry(cluster)
        in_place = bool(entry & COPIED and entry & OFFSET_MASK and not entry & COMPRESSED)
        if in_place and not self._is_zero(entry):
            host = self._data_cluster(entry, f"guest cluster {cluster}")
            self._pwrite(data, host + within)
            return
        # A new cluster (or an owned, preallocated zero cluster) gets the whole cluster's contents:
        # what the guest saw there (backing file, zeros, inflated data) with the write applied.
        if within == 0 and len(data) == self._cs:
            contents: bytes | bytearray | memoryview = data
        else:
            buf = bytearray(self._read_cluster(cluster, 0, self._cs))
            buf[within : within + len(data)] = data
            contents = buf
        if in_place:
            host = self._data_cluster(entry, f"guest cluster {cluster}")
            self._pwrite(contents, host)
            self._set_l2(cluster, host | COPIED)
            return
        host = self._alloc_cluster()
        self._pwrite(contents, host)
        self._set_l2(cluster, host | COPIED)
        self._release(entry)

    def _release(self, entry: int) -> None:
        """Drop the references an L2 entry held, once nothing points at them any more."""
        if entry & COMPRESSED:
            start, length = self._compressed_span(entry)
            for index in range(start >> self._bits, ((start + length - 1) >> self._bits) + 1):
                self._add_ref(index, -1)
            if self._inflated is not None and self._inflated[0] == entry:
                self._inflated = None
        elif entry & OFFSET_MASK:
            self._add_ref((entry & OFFSET_MASK) >> self._bits, -1)

    # -- refcounts --------------------------------------------------------------------------------
    def _refblock(self, index: int) -> bytearray:
        block = self._refblocks.get(index)
        if block is None:
            offset = self._reftable[index] & ~0x1FF
            block = bytearray(os.pread(self._fd, self._cs, offset))
            if len(block) != self._cs:
                raise self._fail(f"refcount block at {offset:#x} is beyond the file")
            self._refblocks[index] = block
        return block

    def _has_block(self, index: int) -> bool:
        return index < len(self._reftable) and bool(self._reftable[index])

    def _get(self, block: bytearray, index: int) -> int:
        bits = self._rc_bits
        if bits >= 8:
            width = bits // 8
            return int.from_bytes(block[index * width : (index + 1) * width], "big")
        per_byte = 8 // bits  # sub-byte refcounts: bit 0 is the least significant
        return block[index // per_byte] >> (index % per_byte * bits) & self._rc_max

    def _put(self, block: bytearray, index: int, value: int) -> tuple[int, int]:
        """Set entry `index` of `block` in memory; (byte offset, byte count) that changed."""
        bits = self._rc_bits
        if bits >= 8:
            width = bits // 8
            block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
            return index * width, width
        per_byte = 8 // bits
        shift = index % per_byte * bits
        at = index // per_byte
        block[at] = block[at] & ~(self._rc_max << shift) | value << shift
        return at, 1

    def _add_ref(self, cluster: int, delta: int) -> None:
        index, slot = divmod(cluster, self._rc_per_block)
        if not self._has_block(index):
            if delta < 0:
                raise self._fail(f"cluster {cluster} has no refcount to drop")
            if index >= len(self._reftable):
                self._grow_reftable(cluster)
            if not self._reftable[index]:
                self._new_refblock(index, cluster)
        block = self._refblock(index)
        value = self._get(block, slot) + delta
        if not 0 <= value <= self._rc_max:
            raise self._fail(f"refcount of cluster {cluster} would be {value}")
        at, n = self._put(block, slot, value)
        self._pwrite(block[at : at + n], (self._reftable[index] & ~0x1FF) + at)
        if value == 0:
            self._free_hint = min(self._free_hint, cluster)

    def _new_refblock(self, index: int, cluster: int) -> None:
        """A refcount block for range `index` (which has none, so all its clusters are free),
        placed inside that range so that it counts itself; `cluster` is about to be taken."""
        first = index * self._rc_per_block
        at = cluster + 1 if (cluster + 1) // self._rc_per_block == index else first
        block = bytearray(self._cs)
        self._put(block, at - first, 1)
        self._pwrite(block, at << self._bits)
        self._refblocks[index] = block
        self._set_reftable(index, at << self._bits)

    def _set_reftable(self, index: int, offset: int) -> None:
        self._reftable[index] = offset
        self._pwrite(_ENTRY.pack(offset), self._reftable_offset + 8 * index)

    def _grow_reftable(self, cluster: int) -> None:
        """A refcount table large enough for `cluster`, written in fresh space at the end of the
        file with new refcount blocks covering it where needed; then the header points at it and
        the old table's clusters are freed."""
        cs, per_block, per_cluster = self._cs, self._rc_per_block, self._cs // 8
        needed = cluster // per_block
        # Clusters from the end of the file on are free, except `cluster`: taken, not yet written.
        start = max(-(-self._end // cs), cluster + 1)
        entries = max(2 * len(self._reftable), needed + 1)
        while True:
            clusters = -(-entries // per_cluster)
            # Ranges of the new area with no refcount block get one placed right after the
            # table; those blocks may reach into further ranges: repeat until the count settles.
            blocks = 0
            while True:
                end = start + clusters + blocks
                missing = [r for r in range(start // per_block, (end - 1) // per_block + 1) if not self._has_block(r)]
                if len(missing) <= blocks:
                    break
                blocks = len(missing)
            top = max([needed, *missing])
            if top < clusters * per_cluster:
                break
            entries = top + 1
        if clusters * cs > MAX_REFTABLE_BYTES:
            raise EmuError(f"{self.what}: the refcount table is full ({MAX_REFTABLE_BYTES >> 20} MiB)")
        area = range(start, start + clusters + len(missing))
        table = array("Q", self._reftable)
        table.extend([0] * (clusters * per_cluster - len(table)))
        for i, r in enumerate(missing):
            block = bytearray(cs)
            for c in area:
                if c // per_block == r:
                    self._put(block, c % per_block, 1)
            offset = (start + clusters + i) << self._bits
            self._pwrite(block, offset)
            self._refblocks[r] = block
            table[r] = offset
        self._pwrite(_entries_bytes(table), start << self._bits)
        for c in area:  # the area's clusters in ranges that already have a block
            if c // per_block not in missing:
                self._add_ref(c, 1)
        os.fsync(self._fd)  # the new table is complete before the header points at it
        old_offset, old_clusters = self._reftable_offset, len(self._reftable) // per_cluster
        self._pwrite(struct.pack(">QI", start << self._bits, clusters), _REFTABLE_AT)
        os.fsync(self._fd)
        self._reftable, self._reftable_offset = table, start << self._bits
        for c in range(old_offset >> self._bits, (old_offset >> self._bits) + old_clusters):
            self._add_ref(c, -1)

    def _next_free(self, cluster: int) -> int:
        """The first cluster from `cluster` on whose refcount is 0."""
        per_block = self._rc_per_block
        while True:
            index, slot = divmod(cluster, per_block)
            if not self._has_block(index):
                return cluster
            block = self._refblock(index)
            if self._rc_bits >= 8:
                width = self._rc_bits // 8
                zero, at = bytes(width), slot * width
                while (at := block.find(zero, at)) >= 0 and at % width:
                    at += width - at % width  # a match straddling two entries: try the next one
                if at >= 0:
                    return index * per_block + at // width
            else:
                for s in range(slot, per_block):
                    if not self._get(block, s):
                        return index * per_block + s
            cluster = (index + 1) * per_block

    def _alloc_cluster(self) -> int:
        """A free cluster's host offset, its refcount already 1."""
        cluster = self._next_free(self._free_hint)
        self._add_ref(cluster, 1)
        self._free_hint = cluster + 1
        return cluster << self._bits
