"""The native ring consumer: ``build/libcadrring.so`` (``cadrring.c``) through ctypes.

One ``cadr_ring_drain`` call walks the ring buffer from its mmap and formats every record
of the common kinds (open, exec, fork, exit, connect/accept/listen) into one output
buffer, JSON lines byte-identical to :meth:`Decoder.decode_json`'s; it stops at a record
whose cgroups have no workload fragment cached yet (Python asks the resolver, hands the
fragment over, and the walk goes on) and at a record Python must decode (dns, privilege,
cgroup bookkeeping, anything malformed: Python decodes it in place and appends its line at
the same spot, so the order is kept). So a poll of thousands of events costs Python a
handful of calls and one copy of the output.

:func:`load_library` returns None when the library was not built (no C compiler) or does
not match this tree; the sensor then uses the pure Python consumer (:mod:`.ringbuf` and
:meth:`Decoder.decode_json`).
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import time
from collections.abc import Callable
from pathlib import Path

from sensors.ebpf import layout
from sensors.ebpf.batch import IDX, JsonBatch
from sensors.ebpf.decode import Decoder
from sensors.ebpf.errors import SensorError

__all__ = [
    "DEFAULT_LIBRARY",
    "NativeConsumer",
    "NativeFormatter",
    "load_library",
]

log = logging.getLogger(__name__)

DEFAULT_LIBRARY = Path(__file__).resolve().parent / "build" / "libcadrring.so"

#: cadrring.c CADR_RING_ABI
_ABI = 1
STOP_EMPTY, STOP_BUDGET, STOP_FULL, STOP_WORKLOAD, STOP_PYTHON = range(5)
FMT_OK, FMT_FULL, FMT_WORKLOAD, FMT_PYTHON = range(4)

_u32, _u64 = ctypes.c_uint32, ctypes.c_uint64


class _Drain(ctypes.Structure):
    """``struct cadr_drain`` (cadrring.c)."""

    _fields_ = [
        ("out", ctypes.c_void_p),
        ("out_cap", _u64),
        ("out_len", _u64),
        ("idx", ctypes.c_void_p),
        ("idx_cap", _u64),
        ("idx_len", _u64),
        ("budget", _u64),
        ("now", ctypes.c_double),
        ("skip_pending", _u32),
        ("reserve", _u32),
        ("events", _u64),
        ("records", _u64),
        ("consumed", _u64),
        ("pend_off", _u64),
        ("pend_len", _u32),
        ("pend_type", _u32),
        ("pend_cgroup", _u64),
        ("pend_cgroup_v1", _u64),
    ]


_LIBS: dict[str, ctypes.CDLL | None] = {}


def load_library(path: str | Path | None = None) -> ctypes.CDLL | None:
    """The native consumer library, or None (logged) when it is missing or was built from
    another layout than this tree's."""
    name = str(path or DEFAULT_LIBRARY)
    if name in _LIBS:
        return _LIBS[name]
    lib: ctypes.CDLL | None = None
    if not Path(name).exists():
        log.info("no %s (build.sh found no C compiler?): using the Python ring consumer", name)
    else:
        try:
            lib = _bind(ctypes.CDLL(name, use_errno=True))
        except (OSError, AttributeError, SensorError) as exc:
            log.warning("cannot use %s (%s): using the Python ring consumer", name, exc)
            lib = None
    _LIBS[name] = lib
    return lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    sig: dict[str, tuple[object, list[object]]] = {
        "cadr_ring_abi": (_u32, [_u32]),
        "cadr_ring_new": (vp, []),
        "cadr_ring_open": (vp, [i, _u64, _u64]),
        "cadr_ring_close": (None, [vp]),
        "cadr_ring_set_node": (i, [vp, ctypes.c_char_p, sz, ctypes.c_char_p, sz]),
        "cadr_ring_set_offset": (None, [vp, ctypes.c_int64]),
        "cadr_ring_put_workload": (i, [vp, _u64, _u64, ctypes.c_char_p, sz, _u32, ctypes.c_double]),
        "cadr_ring_clear_workloads": (None, [vp]),
        "cadr_ring_pending": (_u64, [vp]),
        "cadr_ring_drain": (i, [vp, ctypes.POINTER(_Drain)]),
        "cadr_format_one": (i, [vp, ctypes.c_char_p, _u32, ctypes.POINTER(_Drain)]),
    }
    for fname, (restype, argtypes) in sig.items():
        fn = getattr(lib, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    abi = lib.cadr_ring_abi
    expected = {
        0: _ABI,
        2: layout.HDR.size,
        3: layout.EXEC.size,
        4: layout.OPEN.size,
        5: layout.NET.size,
        6: layout.EXIT.size,
        7: ctypes.sizeof(_Drain),
        8: IDX.size,
    }
    wrong = {what: (int(abi(what)), want) for what, want in expected.items() if int(abi(what)) != want}
    if wrong:
        raise SensorError(
            f"library built for another layout (check: (library, tree)) {wrong}; rerun build.sh"
        )
    return lib


class NativeFormatter:
    """A ``cadr_ring`` context and the Python half of its state: the workload fragments it
    is given, the Kafka keys they name, the output buffers.

    Without ``map_fd`` it formats records given in memory (:meth:`format_one`: tests and
    the decoder benchmark)."""

    #: output bytes kept free for a record Python decodes (so its line fits in place)
    RESERVE = 256 << 10

    def __init__(
        self,
        lib: ctypes.CDLL,
        decoder: Decoder,
        *,
        generation: Callable[[], int] = lambda: 0,
        map_fd: int | None = None,
        ring_size: int = 0,
        out_bytes: int = 16 << 20,
        max_events: int = 1 << 16,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lib = lib
        self.decoder = decoder
        self._generation = generation
        self._mono = monotonic
        if map_fd is None:
            ctx = lib.cadr_ring_new()
        else:
            ctypes.set_errno(0)
            ctx = lib.cadr_ring_open(map_fd, ring_size, mmap.PAGESIZE)
        if not ctx:
            raise SensorError(f"cannot set up the native ring consumer: errno {ctypes.get_errno()}")
        self.ctx: int | None = ctx
        node = decoder.node
        raw, js = node.encode(), decoder._node_json  # the same bytes as the Python path
        if lib.cadr_ring_set_node(ctx, raw, len(raw), js, len(js)):
            raise SensorError("cannot hand the node name to the native consumer")
        self._offset: int | None = None
        self._gen = generation()
        self._keys: list[bytes] = []
        self._key_ids: dict[bytes, int] = {}
        self._d = _Drain()
        self._dref = ctypes.byref(self._d)
        self._alloc(out_bytes, max_events)

    def _alloc(self, out_bytes: int, max_events: int) -> None:
        """Two output buffers, used in turn: a batch is a view of one, so it stays valid
        while the sink works and the next drain fills the other (no copy per poll: a
        fresh multi-megabyte bytes object each poll cost page faults)."""
        self._sets = [_Buffers(out_bytes, max_events), _Buffers(out_bytes, max_events)]
        self._use(0)

    def _use(self, which: int) -> None:
        self._cur = which
        b = self._sets[which]
        d = self._d
        d.out, d.out_cap = ctypes.addressof(b.out), b.out_cap
        d.idx, d.idx_cap = ctypes.addressof(b.idx), b.idx_cap
        d.out_len = d.idx_len = 0
        d.reserve = min(self.RESERVE, b.out_cap // 4)

    def _grow(self, out_need: int) -> None:
        """A bigger current buffer, keeping what it holds (a Python line did not fit)."""
        d = self._d
        used_out, used_idx = d.out_len, d.idx_len
        old = self._sets[self._cur]
        new = _Buffers(max(2 * d.out_cap, used_out + out_need + self.RESERVE), 2 * d.idx_cap)
        ctypes.memmove(new.out, old.out, used_out)
        ctypes.memmove(new.idx, old.idx, used_idx * IDX.size)
        self._sets[self._cur] = new
        self._use(self._cur)
        d.out_len, d.idx_len = used_out, used_idx

    #: distinct Kafka keys remembered before the table starts over (between batches)
    MAX_KEYS = 1 << 16

    def _key_id(self, key: bytes) -> int:
        kid = self._key_ids.get(key)
        if kid is None:
            kid = self._key_ids[key] = len(self._keys)
            self._keys.append(key)
        return kid

    def sync(self) -> None:
        """Follow the clock offset and the attribution (a cgroup came or went); called
        between batches."""
        offset = self.decoder.clock.offset
        if offset != self._offset:
            self.lib.cadr_ring_set_offset(self.ctx, offset)
            self._offset = offset
        gen = self._generation()
        if gen != self._gen or len(self._keys) >= self.MAX_KEYS:
            # the key ids the cached fragments carry go with the table (a batch in a
            # sink keeps the list it was made with)
            self.lib.cadr_ring_clear_workloads(self.ctx)
            self._gen = gen
            if len(self._keys) >= self.MAX_KEYS:
                self._keys, self._key_ids = [], {}

    def put_workload(self, cgroup: int, cgroup_v1: int) -> None:
        """Ask Python's resolver for a cgroup pair's workload and cache it in C."""
        frag, key, expires = self.decoder.workload_fragment(cgroup, cgroup_v1)
        ret = self.lib.cadr_ring_put_workload(
            self.ctx,
            cgroup,
            cgroup_v1,
            frag,
            len(frag),
            self._key_id(key),
            math.inf if expires is None else expires,
        )
        if ret:
            raise SensorError(f"native consumer: cannot cache a workload fragment ({ret})")

    def _append(self, item: tuple[bytes, bytes, int, int]) -> None:
        """Add a line Python made at the current end of the output."""
        d = self._d
        value = item[0]
        n = len(value)
        if d.out_len + n + 1 > d.out_cap or d.idx_len >= d.idx_cap:
            self._grow(n + 1)
        start = d.out_len
        b = self._sets[self._cur]
        b.out_view[start : start + n] = value
        b.out_view[start + n] = 10
        IDX.pack_into(b.idx, d.idx_len * IDX.size, start, start + n, self._key_id(item[1]), item[3], item[2])
        d.out_len = start + n + 1
        d.idx_len += 1

    def _take(self) -> JsonBatch:
        d = self._d
        b = self._sets[self._cur]
        batch = JsonBatch(b.out_view[: d.out_len], b.idx_view[: d.idx_len * IDX.size], self._keys)
        self._use(1 - self._cur)
        return batch

    def format_one(self, record: bytes) -> JsonBatch:
        """Format one record (no ring) the way a drain would, falling back to the Python
        decoder exactly as a drain does: the batch holds zero or one event."""
        self.sync()
        d = self._d
        d.now = self._mono()
        buf = ctypes.create_string_buffer(record, len(record))
        asked = False
        while True:
            rc = self.lib.cadr_format_one(self.ctx, buf, len(record), self._dref)
            if rc == FMT_OK:
                self.decoder.count_fast(1)
                break
            if rc == FMT_WORKLOAD and not asked:
                self.put_workload(*_cgroups(record))
                asked = True
                continue
            if rc == FMT_FULL:
                raise SensorError("native consumer: output buffer too small for one record")
            item = self.decoder.decode_json(memoryview(record), 0, len(record))
            if item is not None:
                self._append(item)
            break
        return self._take()

    def close(self) -> None:
        if self.ctx:
            self.lib.cadr_ring_close(self.ctx)
            self.ctx = None


class _Buffers:
    """One output buffer and its index (``struct cadr_idx`` entries), for C to fill."""

    def __init__(self, out_bytes: int, max_events: int) -> None:
        self.out = ctypes.create_string_buffer(out_bytes)
        self.out_cap = out_bytes
        self.out_view = memoryview(self.out).cast("B")
        self.idx = ctypes.create_string_buffer(max_events * IDX.size)
        self.idx_cap = max_events
        self.idx_view = memoryview(self.idx).cast("B")


def _cgroups(record: bytes) -> tuple[int, int]:
    h = layout.HDR.unpack_from(record, 0)
    return h[11], h[12]


class NativeConsumer(NativeFormatter):
    """Drains a ring buffer map into :class:`JsonBatch` es (one per call)."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        decoder: Decoder,
        view: memoryview,
        map_fd: int,
        ring_size: int,
        *,
        generation: Callable[[], int] = lambda: 0,
        **kw: object,
    ) -> None:
        super().__init__(lib, decoder, generation=generation, map_fd=map_fd, ring_size=ring_size, **kw)  # type: ignore[arg-type]
        #: the same ring mapped by Python (ringbuf.RingBuffer.data): records Python decodes
        #: are read from it at the offsets the C walk reports
        self.view = view

    def pending(self) -> int:
        return int(self.lib.cadr_ring_pending(self.ctx))

    def drain(self, max_bytes: int) -> tuple[JsonBatch, int, bool]:
        """Events of up to about ``max_bytes`` of records, oldest first, released to the
        kernel as they are read: (batch, bytes consumed, more waiting)."""
        self.sync()
        d = self._d
        # out_len/idx_len/skip_pending carry over from a call cut short by an exception:
        # what it formatted is delivered now, and its Python record is not decoded twice
        d.budget = max_bytes
        d.now = self._mono()
        drain, count = self.lib.cadr_ring_drain, self.decoder.count_fast
        ctx, dref = self.ctx, self._dref
        consumed = 0
        asked = -1
        while True:
            rc = drain(ctx, dref)
            consumed += d.consumed
            count(d.events)
            if rc < STOP_WORKLOAD:  # empty, budget spent, or output full
                break
            if rc == STOP_WORKLOAD and (d.consumed or asked != d.pend_off):
                self.put_workload(d.pend_cgroup, d.pend_cgroup_v1)
                asked = d.pend_off
                continue
            # (an answer that expired as it came is not asked for twice: Python decodes)
            # a record for Python: decode it in place, put its line here, step over it
            d.skip_pending = 1
            item = self.decoder.decode_json(self.view, d.pend_off, d.pend_len)
            if item is not None:
                self._append(item)
            if self._generation() != self._gen:  # a cgroup record changed the attribution
                self.lib.cadr_ring_clear_workloads(self.ctx)
                self._gen = self._generation()
        return self._take(), consumed, rc in (STOP_BUDGET, STOP_FULL)
