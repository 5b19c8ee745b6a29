"""A bounded mapping that forgets the least recently written key: the streams' one LRU."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["Lru"]

K = TypeVar("K")
V = TypeVar("V")


class Lru(OrderedDict[K, V]):
    """An :class:`~collections.OrderedDict` of at most ``limit`` keys. :meth:`put` makes a key the newest
    and drops the oldest beyond the limit; reading does not refresh a key (the hot paths that use it write
    what they read again when it matters)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> None:
        """Set ``key`` as the newest entry, forgetting the oldest one when over the limit."""
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)
