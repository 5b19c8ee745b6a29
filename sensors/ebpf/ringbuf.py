"""A consumer of a BPF ring buffer map read straight from its mmap (in Python).

The sensor reads the ring with the native consumer (:mod:`sensors.ebpf.native`) when it
is built; this one is the fallback, and the mapping the native one hands records back
through when Python must decode them.

The kernel's layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (written
by us), page 1 the producer position, then the data pages mapped twice so a record that
wraps around the end is still contiguous. Each record starts with an 8-byte header: a
32-bit length carrying the BUSY (still being written) and DISCARD bits, and a page offset.

Records are decoded in place from the mapping, then the consumer position is advanced
once per batch: no copy, no per-record call into C. Loads are ordered on x86_64 (TSO), so
reading the producer position before the records needs no explicit barrier there.
"""

from __future__ import annotations

import contextlib
import mmap
import platform
import select
import struct
from collections.abc import Callable
from itertools import repeat
from typing import Any

from sensors.ebpf.errors import SensorError

__all__ = ["RingBuffer"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LEN_MASK = ~(_BUSY | _DISCARD) & 0xFFFFFFFF
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    """The consumer side of one ``BPF_MAP_TYPE_RINGBUF`` map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise SensorError("the mmap ring buffer consumer relies on x86_64 memory ordering")
        if size & (size - 1) or size < mmap.PAGESIZE:
            raise SensorError(f"ring buffer size {size} is not a power of two of at least a page")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self.fd = map_fd
        try:
            self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError as exc:
            raise SensorError(f"cannot mmap the ring buffer: {exc}") from exc
        self.data = memoryview(self._prod)
        self.data_off = page
        # Edge-triggered: readable only when the kernel wakes us (a forced wake-up past the
        # backlog threshold), not whenever any record waits; the timer drains the rest.
        self.epoll = select.epoll()
        self.epoll.register(map_fd, select.EPOLLIN | select.EPOLLET)

    def pending(self) -> int:
        """Bytes written by the kernel and not consumed yet."""
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def drain(
        self, decode: Callable[[memoryview, int, int], Any], max_bytes: int
    ) -> tuple[list[Any], int, int]:
        """Decode committed records, oldest first, up to about ``max_bytes``, then release
        them to the kernel. ``decode(data, offset, length)`` returns an item or None.
        Returns (items, records, bytes)."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        if cons == prod:
            return [], 0, 0
        base = self.data_off
        mask = self.mask
        limit = min(prod, cons + max_bytes)
        unpack_len = _U32.unpack_from
        prod_mm = self._prod
        start = cons
        offs: list[int] = []
        lens: list[int] = []
        # find the records first (cheap), then decode them in one C-level map
        while cons < limit:
            off = base + (cons & mask)
            hlen = unpack_len(prod_mm, off)[0]
            if hlen & _BUSY:
                break
            length = hlen & _LEN_MASK
            if not hlen & _DISCARD:
                offs.append(off + 8)
                lens.append(length)
            cons += (length + 15) & ~7
        try:
            items = [x for x in map(decode, repeat(self.data, len(offs)), offs, lens) if x is not None]
        finally:
            # release what was read even if decoding raised: the kernel must not stall
            _U64.pack_into(self._cons, 0, cons)
        return items, len(offs), cons - start

    def wait_fd(self) -> int:
        """A file descriptor that becomes readable on a kernel wake-up."""
        return self.epoll.fileno()

    def clear_wakeup(self) -> None:
        self.epoll.poll(0)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.data.release()
        self.epoll.close()
        self._prod.close()
        self._cons.close()
