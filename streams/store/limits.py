"""Limits of a read-only (forensic) session on the store, set before ``readonly = 1`` so the caller cannot raise them.

With ``readonly = 1`` ClickHouse refuses any change of a setting, in ``SET``, in a ``SETTINGS`` clause or as a
URL parameter; so the limits a session starts with are the limits it keeps. ``cadr query``, ``cadr capture``
and ``cadr replay`` get them on every route: the embedded directory, the owner's query endpoint (which also caps
how many queries run at once and cancels a query whose client went away) and a server (where the user's own
profile applies when the server already makes the user read-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["QueryLimits"]


@dataclass(frozen=True)
class QueryLimits:
    """Per-query limits of a read-only session (0 means unlimited for the ClickHouse settings)."""

    #: most memory one query may use (ClickHouse ``max_memory_usage``)
    max_memory_bytes: int = 2 << 30
    #: most seconds one query may run (``max_execution_time``)
    max_seconds: float = 300.0
    #: most rows and bytes of a result (``max_result_rows`` / ``max_result_bytes``); a capture of a long time range
    #: streams through these too
    max_result_rows: int = 100_000_000
    max_result_bytes: int = 4 << 30
    #: most queries the owner's endpoint runs at once; one more gets a "busy" error at once
    concurrency: int = 4

    @classmethod
    def from_store_settings(cls, store: Any) -> QueryLimits:
        """The limits of the ``[store]`` settings section (``query_*`` fields)."""
        return cls(
            max_memory_bytes=int(store.query_max_memory_bytes),
            max_seconds=float(store.query_timeout_s),
            max_result_rows=int(store.query_max_result_rows),
            max_result_bytes=int(store.query_max_result_bytes),
            concurrency=int(store.query_concurrency),
        )

    def settings(self) -> dict[str, Any]:
        """The ClickHouse settings that enforce these limits (apply them before ``readonly = 1``)."""
        return {
            "max_memory_usage": self.max_memory_bytes,
            "max_execution_time": self.max_seconds,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
        }
