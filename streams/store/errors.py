"""Errors of the event store (rooted in :class:`schemas.errors.CadrError`)."""

from __future__ import annotations

from schemas.errors import CadrError

__all__ = [
    "MigrationError",
    "QueryError",
    "StoreBusyError",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
]


class StoreError(CadrError):
    """Something about the ClickHouse store went wrong."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached (server down, connection refused, timeout); retrying may help."""


class StoreLockedError(StoreError):
    """An embedded store directory is owned by another process and that process serves no query endpoint."""


class MigrationError(StoreError):
    """A schema migration failed; the message names the file and statement."""


class QueryError(StoreError):
    """ClickHouse refused or failed a query (read-only violation, syntax, bad parameter ...)."""


class StoreBusyError(QueryError):
    """The store runs as many read-only queries as it allows at once; try again when one has finished."""
