"""Typed access to Faust tables that hold encoded records (bytes keys and values)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

from schemas.codec import encode

__all__ = ["RecordTable"]

T = TypeVar("T")


class RecordTable(MutableMapping[str, T], Generic[T]):
    """A ``MutableMapping[str, Record]`` view of a Faust table of raw bytes.

    Decoded records are cached so reads on the hot path cost a dict lookup; a write
    encodes once and goes to the table (and so to its changelog)."""

    def __init__(self, table: Any, decoder: Callable[[bytes], T]) -> None:
        self.table = table
        self.decoder = decoder
        self._cache: dict[str, T] = {}

    def __getitem__(self, key: str) -> T:
        if key in self._cache:
            return self._cache[key]
        raw = self.table[key.encode()]
        if raw is None:
            raise KeyError(key)
        value = self.decoder(raw)
        self._cache[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: T) -> None:
        self._cache[key] = value
        self.table[key.encode()] = encode(value)

    def __delitem__(self, key: str) -> None:
        self._cache.pop(key, None)
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self.table)

    def __len__(self) -> int:
        return len(self.table)
