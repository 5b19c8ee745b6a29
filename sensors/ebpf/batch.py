"""One poll's events as JSON lines: what the sensor hands a JSON sink.

The native consumer (:mod:`sensors.ebpf.native`) fills one buffer with every event of a
poll, a newline after each, plus a packed index (line bounds, Kafka key id, time, cpu);
the pure Python consumer builds the same thing from a list of items. A file sink writes
:attr:`JsonBatch.data` as it is; a Kafka sink asks for :meth:`JsonBatch.items`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["IDX", "JsonBatch", "JsonItem"]

#: one JSON item: (value, Kafka key, timestamp ms, cpu)
JsonItem = tuple[bytes, bytes, int, int]
#: one index entry (``struct cadr_idx`` in cadrring.c): line start, end (newline
#: excluded), key id, cpu, timestamp ms
IDX = struct.Struct("<IIIIq")


class JsonBatch:
    """Events of one poll: JSON lines (each ends with a newline) and, per event, its
    Kafka key, timestamp (ms) and the CPU its record came from.

    From the native consumer, :attr:`data` and the index are views of its output
    buffer (no copy): valid until the second drain after the one that made the batch,
    which is after the sensor handed it to the sink. The values :meth:`items` returns
    are copies; ``bytes(batch.data)`` keeps the lines."""

    __slots__ = ("_data", "_index", "_items", "_keys", "count")

    def __init__(self, data: bytes | memoryview, index: bytes | memoryview, keys: Sequence[bytes]) -> None:
        self._data: bytes | memoryview | None = data
        self._index = index
        self._keys = keys
        self._items: list[JsonItem] | None = None
        self.count = len(index) // IDX.size

    @classmethod
    def from_items(cls, items: list[JsonItem]) -> JsonBatch:
        """A batch of items the Python decoder made (no index needed)."""
        batch = cls(b"", b"", ())
        batch._data = None
        batch._items = items
        batch.count = len(items)
        return batch

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def data(self) -> bytes | memoryview:
        """Every event's JSON, one per line, each line ending with a newline."""
        if self._data is None:
            items = self._items or []
            self._data = b"\n".join([item[0] for item in items]) + b"\n" if items else b""
        return self._data

    def items(self) -> list[JsonItem]:
        """(value, key, timestamp ms, cpu) per event, in order."""
        if self._items is None:
            data, keys = self._data or b"", self._keys
            self._items = [
                (bytes(data[start:end]), keys[key], ts, cpu)
                for start, end, key, cpu, ts in IDX.iter_unpack(self._index)
            ]
        return self._items

    def cpus(self) -> list[int]:
        """The CPU of each event's record (for per-CPU drop counts)."""
        if self._items is not None:
            return [item[3] for item in self._items]
        return [entry[3] for entry in IDX.iter_unpack(self._index)]
