"""A bounded on-disk FIFO of record batches: where events wait while Kafka is away.

Each batch is one segment file named by its sequence number (``<seq:020d>.seg``), written
to a temporary name and renamed, so a crash leaves whole segments or none. A segment is
``MAGIC | count:u32 | records | crc32:u32`` with each record ``klen:i32 key vlen:u32 value
ts_ms:i64`` (``klen = -1`` for no key). Reading order is sequence order. When a new
segment would pass ``max_bytes``, the oldest segments are deleted first and their records
counted in :attr:`Spool.dropped`: a full spool loses the oldest events, never silently.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import CadrError

__all__ = ["Record", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

#: (key, value, timestamp in ms)
Record = tuple[bytes | None, bytes, int]

_MAGIC = b"CADRSPL1"
_HEAD = struct.Struct("<8sI")
_KLEN = struct.Struct("<i")
_VLEN = struct.Struct("<I")
_TS = struct.Struct("<q")
_CRC = struct.Struct("<I")
_SUFFIX = ".seg"


class SpoolError(CadrError):
    """The spool directory cannot be used."""


@dataclass
class _Segment:
    seq: int
    size: int
    count: int


class Spool:
    """Segments of records on disk, oldest first, bounded by ``max_bytes``."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.dir}: {exc}") from exc
        self._segments: dict[int, _Segment] = {}
        #: records deleted to stay under max_bytes, plus records of corrupt segments
        self.dropped = 0
        self.bytes = 0
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # a write cut short by a crash
        for path in sorted(self.dir.glob("*" + _SUFFIX)):
            try:
                seq = int(path.name[: -len(_SUFFIX)])
                with path.open("rb") as fh:
                    magic, count = _HEAD.unpack(fh.read(_HEAD.size))
                if magic != _MAGIC:
                    raise ValueError("bad magic")
            except (ValueError, OSError, struct.error):
                log.warning("spool: ignoring unreadable segment %s", path)
                path.unlink(missing_ok=True)
                continue
            size = path.stat().st_size
            self._segments[seq] = _Segment(seq, size, count)
            self.bytes += size

    # -- state --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._segments)

    @property
    def events(self) -> int:
        return sum(s.count for s in self._segments.values())

    def head_seq(self) -> int | None:
        return min(self._segments) if self._segments else None

    def last_seq(self) -> int | None:
        return max(self._segments) if self._segments else None

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{_SUFFIX}"

    # -- writing ------------------------------------------------------------------------

    @staticmethod
    def encode(records: list[Record]) -> bytes:
        parts = [_HEAD.pack(_MAGIC, len(records))]
        for key, value, ts in records:
            parts.append(_KLEN.pack(-1 if key is None else len(key)))
            if key is not None:
                parts.append(key)
            parts.append(_VLEN.pack(len(value)))
            parts.append(value)
            parts.append(_TS.pack(ts))
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    def append(self, seq: int, records: list[Record]) -> int:
        """Write one segment; returns how many old records were dropped to make room."""
        if not records:
            return 0
        if seq in self._segments:
            raise SpoolError(f"spool segment {seq} already exists")
        data = self.encode(records)
        dropped = 0
        # A batch larger than the whole spool keeps its newest records.
        while len(data) > self.max_bytes and len(records) > 1:
            cut = max(1, len(records) // 4)
            dropped += cut
            records = records[cut:]
            data = self.encode(records)
        while self._segments and self.bytes + len(data) > self.max_bytes:
            oldest = self._segments.pop(min(self._segments))
            self._path(oldest.seq).unlink(missing_ok=True)
            self.bytes -= oldest.size
            dropped += oldest.count
        path = self._path(seq)
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write spool segment {path}: {exc}") from exc
        self._segments[seq] = _Segment(seq, len(data), len(records))
        self.bytes += len(data)
        self.dropped += dropped
        return dropped

    # -- reading ------------------------------------------------------------------------

    @staticmethod
    def decode(data: bytes) -> list[Record]:
        if len(data) < _HEAD.size + _CRC.size:
            raise ValueError("short segment")
        body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
        if zlib.crc32(body) != crc:
            raise ValueError("checksum mismatch")
        magic, count = _HEAD.unpack_from(body, 0)
        if magic != _MAGIC:
            raise ValueError("bad magic")
        pos = _HEAD.size
        out: list[Record] = []
        for _ in range(count):
            (klen,) = _KLEN.unpack_from(body, pos)
            pos += _KLEN.size
            key = None
            if klen >= 0:
                key = body[pos : pos + klen]
                pos += klen
            (vlen,) = _VLEN.unpack_from(body, pos)
            pos += _VLEN.size
            value = body[pos : pos + vlen]
            pos += vlen
            (ts,) = _TS.unpack_from(body, pos)
            pos += _TS.size
            out.append((key, value, ts))
        return out

    def read(self, seq: int) -> list[Record]:
        """The records of one segment (a corrupt one is removed and counted as dropped)."""
        seg = self._segments.get(seq)
        if seg is None:
            raise SpoolError(f"no spool segment {seq}")
        try:
            return self.decode(self._path(seq).read_bytes())
        except (OSError, ValueError, struct.error) as exc:
            log.error("spool: dropping corrupt segment %s (%d records): %s", self._path(seq), seg.count, exc)
            self.remove(seq)
            self.dropped += seg.count
            return []

    def remove(self, seq: int) -> None:
        seg = self._segments.pop(seq, None)
        if seg is not None:
            self._path(seq).unlink(missing_ok=True)
            self.bytes -= seg.size
