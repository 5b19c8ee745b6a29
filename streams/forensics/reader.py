"""Read-only access to the event store for ``cadr query``, ``cadr capture`` and ``cadr replay``.

Where the store lives decides the route, and the user never has to know:

- a server DSN (``http(s)://``): a clickhouse-connect client with ``readonly`` set for every request;
- an embedded store (``chdb:///dir``) whose owner (``cadr up`` / ``cadr worker``) runs: its local read-only
  query endpoint, found through ``<dir>/cadr-query-endpoint.json`` (no "directory is locked" errors);
- an embedded store nobody runs: the directory itself, opened with ``readonly = 1`` on the engine handle.

Every route is read-only at the engine, and every statement is also checked with ClickHouse's own parser
(:mod:`streams.store.guard`) for the statements ``readonly`` lets through on an embedded engine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from schemas.settings import Settings
from streams.store.client import (
    Client,
    StoreAccess,
    chdb_dir_locked,
    open_client,
    parse_dsn,
    wrap_error,
)
from streams.store.endpoint import read_endpoint_info
from streams.store.errors import StoreError, StoreLockedError
from streams.store.guard import check_statement
from streams.store.limits import QueryLimits

__all__ = ["StoreReader", "open_reader"]


@dataclass
class StoreReader:
    """A read-only session on the store; ``route`` says how it was reached (server, endpoint, directory)."""

    client: Client
    database: str
    route: str
    #: the route's engine already checks statements (the owner's endpoint does); skip the extra round trips
    checked_by_server: bool = False

    def check(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        if self.checked_by_server:
            return
        check_statement(
            sql,
            # No output format: clickhouse-connect would append "FORMAT x" after EXPLAIN AST's statement; the
            # checker's queries name their own format where it matters.
            lambda q, p: self.client.raw_query(q, parameters=dict(p)).decode(),
            params,
            database=self.client.database or "default",
            encode=lambda s: s,
        )

    def raw(self, sql: str, params: Mapping[str, Any] | None = None, fmt: str = "JSONEachRow") -> bytes:
        """The result of ``sql`` in a ClickHouse output format, parameters bound by the server."""
        self.check(sql, params)
        try:
            return self.client.raw_query(sql, parameters=dict(params or {}), fmt=fmt)
        except ClickHouseError as exc:
            raise wrap_error(exc, "query") from exc

    def stream(
        self, sql: str, params: Mapping[str, Any] | None = None, fmt: str = "JSONEachRow"
    ) -> Iterator[bytes]:
        """Like :meth:`raw`, in chunks (for captures larger than memory)."""
        self.check(sql, params)
        try:
            with self.client.raw_stream(sql, parameters=dict(params or {}), fmt=fmt) as chunks:
                yield from chunks
        except ClickHouseError as exc:
            raise wrap_error(exc, "query") from exc

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self.check(sql, params)
        try:
            return [tuple(r) for r in self.client.query(sql, parameters=dict(params or {})).result_rows]
        except ClickHouseError as exc:
            raise wrap_error(exc, "query") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(settings: Settings, *, wait_s: float = 10.0) -> StoreReader:
    """A read-only session on the configured store (see the module docstring for the routes)."""
    dsn = settings.store_dsn
    target = parse_dsn(dsn)
    database = settings.store.database
    limits = QueryLimits.from_store_settings(settings.store)
    if not target.embedded:
        client = open_client(
            dsn, readonly=True, limits=limits, access=StoreAccess.from_store_settings(settings.store)
        )
        return StoreReader(client, database, route=f"server {dsn.split('@')[-1]}")
    if not target.path:
        raise StoreError("an in-memory store cannot be queried from another process")
    store = Path(target.path)
    deadline = time.monotonic() + wait_s
    while True:
        info = read_endpoint_info(store)
        if info is not None:
            try:
                client = open_client(info.dsn, readonly=True)
            except StoreError:
                if time.monotonic() > deadline:
                    raise
            else:
                return StoreReader(
                    client, database, route=f"worker endpoint {info.url}", checked_by_server=True
                )
        if not store.exists():
            raise StoreError(
                f"no event store at {store} (start `cadr up` or `cadr worker`, or set CADR_STORE_DSN)"
            )
        if not chdb_dir_locked(str(store)):
            direct: Client | None
            try:
                direct = open_client(f"chdb://{store}", readonly=True, limits=limits)
            except StoreLockedError:
                direct = None
            except ClickHouseError as exc:
                raise wrap_error(exc, f"opening {store}") from exc
            if direct is not None:
                return StoreReader(direct, database, route=f"directory {store}")
        if time.monotonic() > deadline:
            raise StoreLockedError(
                f"store {store} is owned by another process that serves no query endpoint "
                f"(is it still starting? an older cadr?)"
            )
        # The owner may be starting up: its endpoint file appears once the engine is open.
        time.sleep(0.2)
