"""Open clickhouse-connect clients for a store DSN: ``chdb:///<dir>`` (embedded) or ``http(s)://host:port``.

Every ClickHouse call in cadr goes through clickhouse-connect, so the embedded engine and a server are used
through the same API; the one exception is the sink's raw insert into an embedded engine, which feeds it from
an in-memory file through a chdb handle of its own (:mod:`streams.store.raw_insert`). Read-only clients are read-only *at the server*: the ``readonly`` setting is applied to
the connection, and ClickHouse refuses writes, DDL, SYSTEM, table functions that touch files or URLs, and any
attempt to lower the setting again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from streams.store.errors import (
    QueryError,
    StoreBusyError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from streams.store.limits import QueryLimits

__all__ = [
    "Client",
    "StoreAccess",
    "StoreTarget",
    "chdb_dir_locked",
    "client_for",
    "open_client",
    "parse_dsn",
    "private_dir",
    "wrap_error",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreAccess:
    """How to authenticate to a ClickHouse server and check its certificate (unused by an embedded store).

    Built from the ``[store]`` settings by :meth:`from_store_settings`: the password comes from
    ``store.password_file`` (a mounted secret, read each time a client is made, so a rotated secret is picked
    up) or ``store.password``; a user and password in the DSN itself still work, these win over them.
    """

    username: str = ""
    password_file: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    tls_verify: bool = True

    @classmethod
    def from_store_settings(cls, store: Any) -> StoreAccess:
        return cls(
            username=str(getattr(store, "username", "") or ""),
            password_file=str(getattr(store, "password_file", "") or ""),
            password=str(getattr(store, "password", "") or ""),
            ca_file=str(getattr(store, "ca_file", "") or ""),
            tls_verify=bool(getattr(store, "tls_verify", True)),
        )

    def client_kwargs(self, dsn: str) -> dict[str, Any]:
        """clickhouse-connect ``get_client`` arguments for a server DSN."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        password = self.password
        if self.password_file:
            try:
                password = Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise StoreError(f"store.password_file {self.password_file}: {exc.strerror or exc}") from exc
        if password:
            kwargs["password"] = password
            parsed = urlparse(dsn)
            if parsed.scheme in ("http", "clickhouse") and parsed.hostname not in _LOOPBACK:
                log.warning("the store password goes to %s over plain http: use https://", parsed.hostname)
        if self.ca_file:
            kwargs["ca_cert"] = self.ca_file
        if not self.tls_verify:
            kwargs["verify"] = False
        return kwargs


_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True)
class StoreTarget:
    """A parsed store DSN."""

    dsn: str
    kind: str  # "chdb" | "http"
    path: str = ""  # data directory for chdb

    @property
    def embedded(self) -> bool:
        return self.kind == "chdb"


def parse_dsn(dsn: str) -> StoreTarget:
    """Classify a DSN; chdb paths are made absolute (chdb compares engine paths literally)."""
    parsed = urlparse(dsn)
    if parsed.scheme == "chdb":
        if parsed.netloc in ("memory", ":memory:"):
            return StoreTarget(dsn=dsn, kind="chdb", path="")
        location = parsed.netloc + parsed.path
        if not location:
            raise StoreError(f"store DSN {dsn!r} names no directory (use chdb:///absolute/path)")
        path = os.path.realpath(location)
        return StoreTarget(dsn=f"chdb://{path}", kind="chdb", path=path)
    if parsed.scheme in ("http", "https", "clickhouse", "clickhouses"):
        return StoreTarget(dsn=dsn, kind="http")
    raise StoreError(f"store DSN {dsn!r}: scheme must be chdb, http or https")


def private_dir(path: str) -> None:
    """Create the store directory owner-only (0700), or make an existing one so.

    The events are sensitive (command lines, paths, API calls). The directory's mode keeps everyone else out of
    every file in it; ``cadr`` also runs with umask 077 (cadr/cli.py), so the files it creates are 0600.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)


def chdb_dir_locked(path: str) -> bool:
    """True when another process holds the embedded engine lock of ``path``.

    ClickHouse locks ``<dir>/status`` with ``flock``; probing with a non-blocking shared attempt tells whether
    an owner exists without taking the directory (the probe's lock is released at once).
    """
    import fcntl

    status = Path(path) / "status"
    if not status.exists():
        return False
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def wrap_error(exc: BaseException, what: str) -> StoreError:
    """Translate a clickhouse-connect error into cadr's error tree (the caller raises it ``from exc``)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, OperationalError) and not _is_server_error(text):
        return StoreUnavailableError(f"{what}: store unavailable: {first}")
    if "Cannot lock file" in text or "Another server instance" in text:
        return StoreLockedError(f"{what}: {first}")
    if "Code: 202." in text or "TOO_MANY_SIMULTANEOUS_QUERIES" in text:
        return StoreBusyError(f"{what}: {_clean(text)}")
    if isinstance(exc, (DatabaseError, ClickHouseError)) or _is_server_error(text):
        # (the second: chdb's own handle, used by the sink's raw inserts, raises RuntimeError)
        return QueryError(f"{what}: {_clean(text)}")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return StoreUnavailableError(f"{what}: store unavailable: {first}")
    return StoreError(f"{what}: {first}")


def _is_server_error(text: str) -> bool:
    # A server-side exception ("Code: 60. DB::Exception ...") came back over a working connection.
    return "Code: " in text and "DB::Exception" in text


def _clean(text: str) -> str:
    # clickhouse-connect wraps the server text in a preamble; keep the ClickHouse part on one line.
    idx = text.find("Code: ")
    core = text[idx:] if idx >= 0 else text
    core = core.split("\n\n")[0]
    return " ".join(core.split())


def open_client(
    dsn: str,
    *,
    database: str | None = None,
    readonly: bool = False,
    limits: QueryLimits | None = None,
    access: StoreAccess | None = None,
    settings: Mapping[str, Any] | None = None,
    connect_timeout: float = 10.0,
    send_receive_timeout: float = 300.0,
) -> Client:
    """A clickhouse-connect client for ``dsn``.

    ``readonly=True`` makes the *connection* read-only at the server: ``readonly=1`` on the chdb handle, and
    with every HTTP request (no writes, no DDL, no table functions, no setting changes in the query), after the
    per-query ``limits`` (default :class:`QueryLimits`), which the session then cannot raise. ``access``
    authenticates to a server and checks its certificate.
    """
    target = parse_dsn(dsn)
    merged: dict[str, Any] = dict(settings or {})
    try:
        if target.embedded:
            if readonly:
                # Order matters: limits first, then readonly (after it, no setting can change on this handle).
                merged = {**(limits or QueryLimits()).settings(), **merged, "readonly": 1}
            if target.path and not readonly:
                private_dir(target.path)
            # USE of a database that does not exist yet fails; the migration runner creates it.
            return clickhouse_connect.get_client(
                dsn=target.dsn if target.path else "chdb://memory", database=database, settings=merged
            )
        # clickhouse-connect takes host, port and credentials from the DSN but not its scheme: an https:// DSN
        # would be spoken to in plain http unless the interface is named.
        secure = urlparse(target.dsn).scheme in ("https", "clickhouses")
        client = clickhouse_connect.get_client(
            dsn=target.dsn,
            interface="https" if secure else "http",
            **(access or StoreAccess()).client_kwargs(target.dsn),
            database=database,
            settings=merged,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            autogenerate_session_id=False,
            query_retries=0,
        )
        if readonly:
            _make_readonly(client, limits or QueryLimits())
        return client
    except ClickHouseError as exc:
        if target.embedded and target.path and chdb_dir_locked(target.path):
            raise StoreLockedError(
                f"store directory {target.path} is owned by another process (cadr up / cadr worker)"
            ) from exc
        raise wrap_error(exc, f"connecting to {target.dsn}") from exc
    except RuntimeError as exc:
        raise wrap_error(exc, f"connecting to {target.dsn}") from exc


def _make_readonly(client: Client, limits: QueryLimits) -> None:
    """Send ``readonly = 1`` with every request of ``client`` and check that the server applies it.

    ``readonly = 1`` (not 2): with 2, ClickHouse still runs table functions, and ``INSERT INTO FUNCTION
    file(...)`` and ``SELECT ... FROM file('/etc/passwd')`` go through. A server (or cadr's own query endpoint)
    that already enforces read-only for this user reports the setting as not changeable; then nothing is sent.
    """
    current = int(client.query("SELECT toUInt8(getSetting('readonly'))").result_rows[0][0])
    if current != 1:
        # A server stops a read-only query whose client closed the connection when asked to.
        for key, value in {**limits.settings(), "cancel_http_readonly_queries_on_client_close": 1}.items():
            client.set_client_setting(key, value)
        client.set_client_setting("readonly", 1)
        current = int(client.query("SELECT toUInt8(getSetting('readonly'))").result_rows[0][0])
    if current != 1:
        raise QueryError("the server did not apply readonly = 1 to this connection; refusing to run queries")


@contextlib.contextmanager
def client_for(dsn: str, **kwargs: Any) -> Iterator[Client]:
    """``open_client`` as a context manager that closes the client (and frees a chdb engine path)."""
    client = open_client(dsn, **kwargs)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
