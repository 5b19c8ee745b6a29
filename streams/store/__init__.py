"""The store stage: every event, alert, incident and profile into ClickHouse (chdb embedded or a server).

``register(cadr_app)`` adds :class:`~streams.store.service.StoreService` to the Faust app: it consumes the
``events``, ``alerts``, ``incidents`` and ``profiles`` topics in batches, inserts them through
clickhouse-connect off the event loop, and commits offsets only after an insert succeeded. Submodules:

- :mod:`streams.store.client` — clients for ``chdb:///dir`` and ``http(s)://`` DSNs, read-only sessions
- :mod:`streams.store.migrations` — applies ``deploy/clickhouse/NNN_*.sql`` at start (idempotent)
- :mod:`streams.store.columns` — records → pyarrow tables, column by column
- :mod:`streams.store.dedup` / :mod:`streams.store.sink` — exact dedup of redelivered batches; retrying writer
- :mod:`streams.store.endpoint` / :mod:`streams.store.guard` — the owner's read-only ClickHouse HTTP endpoint
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.store.errors import (
    MigrationError,
    QueryError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = [
    "MigrationError",
    "QueryError",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
    "register",
]


def register(cadr_app: CadrApp) -> None:
    """Add the store service to the worker (and expose it as ``cadr_app.stages["store"]``)."""
    from streams.store.service import StoreService

    service = StoreService(cadr_app.settings)
    # Faust starts extra services after the app's own start-up and stops them with it.
    cadr_app.app._extra_services.append(service)  # type: ignore[arg-type]
    cadr_app.stages["store"] = service
