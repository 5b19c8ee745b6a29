"""A ClickHouse HTTP interface over the embedded engine (chdb), for the process that owns the store directory.

One data directory is owned by one process (chdb locks it), so ``cadr query`` cannot open the store while
``cadr up`` or ``cadr worker`` runs. The owner serves this endpoint on loopback instead, and ``cadr query``
talks to it with the ordinary clickhouse-connect HTTP client: the same client code for a server, the endpoint
and (when nothing runs) the directory itself.

It speaks the part of ClickHouse's HTTP interface that clickhouse-connect uses: the query in the URL, the body
or a multipart form; ``param_<name>`` values bound by the engine (``{name:Type}``, never spliced into SQL);
``database``; settings as URL parameters; lz4/zstd/gzip request bodies; and errors as
``X-ClickHouse-Exception-Code`` with ClickHouse's own message.

Read-only mode (the default) runs every request on a fresh engine handle on which the per-query limits
(:class:`~streams.store.limits.QueryLimits`: memory, run time, result size) and then ``readonly = 1`` are set
before the request's SQL or settings are seen: ClickHouse itself refuses INSERT, ALTER, DROP, SYSTEM, file and
URL table functions, and any attempt to change a setting; :mod:`streams.store.guard` refuses what ``readonly``
lets through (the ``file()`` function, ``INTO OUTFILE`` ...). At most ``limits.concurrency`` queries run at once:
one more is answered at once with ClickHouse's "too many simultaneous queries" error (code 202), and a query
whose client closed the connection is cancelled (``KILL QUERY`` on the handle's ``log_comment`` mark). Access
needs the password written, owner-readable only, to ``<store dir>/cadr-query-endpoint.json``, so the endpoint
grants no more than reading the directory.

``writable=True`` (tests only: a stand-in for a ClickHouse server, see tests/streams/clickhouse_http.py) also
accepts ``INSERT ... FORMAT <fmt>`` with the data in the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import secrets
import ssl
import tempfile
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from streams.store.client import parse_dsn
from streams.store.errors import QueryError
from streams.store.guard import check_statement
from streams.store.limits import QueryLimits

__all__ = ["ENDPOINT_FILE", "EndpointInfo", "QueryEndpoint", "read_endpoint_info"]

log = logging.getLogger(__name__)

#: file in the store directory naming the owner's endpoint (url, user, password, pid)
ENDPOINT_FILE = "cadr-query-endpoint.json"

_USER = "cadr"
_SETTING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT_RE = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>[`\"\w.]+)\s*(?P<cols>\([^)]*\))?\s*(?:SETTINGS\s+(?P<settings>.*?)\s+)?"
    r"FORMAT\s+(?P<fmt>\w+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CODE_RE = re.compile(r"Code: (\d+)\.")
# Parameters that steer the HTTP exchange itself; the engine never sees them as settings.
_TRANSPORT = {
    "query",
    "database",
    "default_format",
    "user",
    "password",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "enable_http_compression",
    "wait_end_of_query",
    "client_protocol_version",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close",
    "buffer_size",
    "quota_key",
    "role",
    "readonly",
}
#: how often a running query looks whether its client is still connected
_CLIENT_POLL_S = 0.2


@dataclass(frozen=True)
class EndpointInfo:
    """How to reach the owner's endpoint (the content of ``ENDPOINT_FILE``)."""

    url: str
    user: str
    password: str
    pid: int

    @property
    def dsn(self) -> str:
        host_port = self.url.split("://", 1)[1]
        return f"http://{self.user}:{self.password}@{host_port}"


def read_endpoint_info(store_dir: str | Path) -> EndpointInfo | None:
    """The endpoint the owner of ``store_dir`` serves, or None (no file, or its process is gone)."""
    path = Path(store_dir) / ENDPOINT_FILE
    try:
        data = json.loads(path.read_text())
        info = EndpointInfo(
            url=data["url"], user=data["user"], password=data["password"], pid=int(data["pid"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return info


class _RequestError(Exception):
    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        import zlib

        return zlib.decompress(body)
    raise _RequestError(1, f"unsupported Content-Encoding {encoding!r}")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class QueryEndpoint:
    """Serve ClickHouse's HTTP interface for a chdb directory on loopback, in a background thread."""

    def __init__(
        self,
        dsn: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        writable: bool = False,
        password: str | None = None,
        limits: QueryLimits | None = None,
        write_info_file: bool = True,
        user: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        target = parse_dsn(dsn)
        if not target.embedded or not target.path:
            raise ValueError("the query endpoint serves an embedded (chdb:///dir) store")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the query endpoint binds loopback only")
        self.path = target.path
        self.host = host
        self.port = port
        self.writable = writable
        self.password = secrets.token_urlsafe(24) if password is None else password
        #: when set, the user name a client must present as well (the stand-in server of the tests)
        self.user = user
        self.ssl_context = ssl_context
        self._write_info = write_info_file
        self.limits = limits or QueryLimits()
        self._pool = ThreadPoolExecutor(max_workers=self.limits.concurrency, thread_name_prefix="cadr-query")
        #: queries running now (only the event loop thread changes it)
        self._active = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    @property
    def info(self) -> EndpointInfo:
        return EndpointInfo(url=self.url, user=_USER, password=self.password, pid=os.getpid())

    def start(self) -> QueryEndpoint:
        """Bind and serve; returns once the socket listens (``port=0`` picks a free port)."""
        self._thread = threading.Thread(target=self._run, name="cadr-query-endpoint", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if self._write_info:
            self._publish_info()
        log.info(
            "query endpoint for %s on %s (%s)",
            self.path,
            self.url,
            "writable" if self.writable else "read-only",
        )
        return self

    def stop(self) -> None:
        if self._write_info:
            with contextlib.suppress(OSError):
                info_path = Path(self.path) / ENDPOINT_FILE
                data = json.loads(info_path.read_text())
                if data.get("pid") == os.getpid() and data.get("url") == self.url:
                    info_path.unlink()
        loop = self._loop
        if loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> QueryEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _publish_info(self) -> None:
        path = Path(self.path) / ENDPOINT_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": self.url, "user": _USER, "password": self.password, "pid": os.getpid()}, fh)
        os.replace(tmp, path)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("GET", "/ping", self._ping)
            app.router.add_route("*", "/", self._handle)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(
                self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
            )
            loop.run_until_complete(site.start())
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                self.port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- HTTP -----------------------------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def _authorized(self, request: web.Request, params: Mapping[str, str]) -> bool:
        if not self.password:
            return True
        user = request.headers.get("X-ClickHouse-User") or params.get("user")
        supplied = request.headers.get("X-ClickHouse-Key") or params.get("password")
        if supplied is None and request.headers.get("Authorization", "").startswith("Basic "):
            import base64

            with contextlib.suppress(ValueError):
                raw = base64.b64decode(request.headers["Authorization"][6:]).decode()
                user, _, supplied = raw.partition(":")
        if self.user and not secrets.compare_digest(user or "", self.user):
            return False
        return supplied is not None and secrets.compare_digest(supplied, self.password)

    async def _handle(self, request: web.Request) -> web.Response:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "cadr",
        }
        try:
            params: dict[str, str] = dict(request.query)
            if not self._authorized(request, params):
                raise _RequestError(516, "default: Authentication failed: password is incorrect", status=403)
            if not self.writable and self._active >= self.limits.concurrency:
                raise _RequestError(
                    202,
                    f"Too many simultaneous queries: the store is busy running {self._active} read-only queries "
                    f"(store.query_concurrency = {self.limits.concurrency}); try again when one has finished",
                    status=500,
                )
            self._active += 1
            try:
                body = await self._read_body(request, params)
                data, fmt, summary = await self._run_request(request, params, body)
            finally:
                self._active -= 1
            headers["X-ClickHouse-Summary"] = json.dumps(summary)
            if fmt:
                headers["X-ClickHouse-Format"] = fmt
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        except _RequestError as exc:
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            return web.Response(
                status=exc.status, text=f"Code: {exc.code}. DB::Exception: {exc}\n", headers=headers
            )

    async def _read_body(self, request: web.Request, params: dict[str, str]) -> bytes:
        if request.method != "POST":
            return b""
        if request.content_type.startswith("multipart/form-data"):
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, str):
                    params[name] = value
                elif isinstance(value, (bytes, bytearray)):
                    params[name] = bytes(value).decode()
                else:
                    params[name] = value.file.read().decode()
            return b""
        return _decompress(await request.read(), request.headers.get("Content-Encoding", ""))

    async def _run_request(
        self, request: web.Request, params: dict[str, str], body: bytes
    ) -> tuple[bytes, str, dict[str, str]]:
        """Run the request on an executor thread; cancel it in the engine when the client goes away."""
        loop = asyncio.get_running_loop()
        mark = f"cadr-query-{uuid.uuid4()}"
        gone = threading.Event()
        future = loop.run_in_executor(self._pool, self._execute, params, body, mark, gone)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=_CLIENT_POLL_S)
                if done:
                    return future.result()
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
        except asyncio.CancelledError:
            gone.set()
            await asyncio.shield(self._cancel(future, mark))
            raise
        gone.set()
        await self._cancel(future, mark)
        raise _RequestError(394, "Query was cancelled: the client closed the connection", status=499)

    async def _cancel(self, future: asyncio.Future[Any], mark: str) -> None:
        """Kill the query marked ``mark`` until its thread has finished (it may not have started yet)."""
        loop = asyncio.get_running_loop()
        while not future.done():
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, self._kill, mark)
            await asyncio.wait({future}, timeout=0.5)
        with contextlib.suppress(BaseException):
            future.result()
        log.info("query endpoint: cancelled a query whose client went away")

    def _kill(self, mark: str) -> None:
        import chdb

        conn = chdb.connect(self.path)
        try:
            conn.query(f"KILL QUERY WHERE Settings['log_comment'] = {_quote(mark)} ASYNC", "TSV")
        finally:
            conn.close()

    # -- engine -------------------------------------------------------------------------------------------

    def _execute(
        self, params: dict[str, str], body: bytes, mark: str = "", gone: threading.Event | None = None
    ) -> tuple[bytes, str, dict[str, str]]:
        import chdb

        sql = params.get("query", "")
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in _TRANSPORT and not k.startswith("param_")}
        if self.writable and "readonly" in params:
            # A server honours a client's request to be read-only; the read-only endpoint enforces it anyway.
            settings["readonly"] = params["readonly"]
        insert = None
        if self.writable and sql and body:
            insert = _INSERT_RE.match(sql)
        if not insert:
            # ClickHouse appends the body to the URL query (the query may come whole in either).
            sql = (sql + "\n" + body.decode()) if sql and body else (sql or body.decode())
            body = b""
        if not sql.strip():
            raise _RequestError(62, "Empty query")
        try:
            conn = chdb.connect(self.path)
        except Exception as exc:
            raise _RequestError(_code(exc), _message(exc), status=500) from exc
        tmp_path = ""
        try:
            database = params.get("database")
            if not self.writable:
                # Limits and the cancel mark first: after readonly = 1 no setting can change on this handle.
                for key, value in {**self.limits.settings(), "log_comment": mark}.items():
                    conn.query(f"SET {key} = {_quote(str(value))}")
                conn.query("SET readonly = 1")
                try:
                    check_statement(
                        sql,
                        lambda q, p: conn.query(q, "TSVRaw", params=p).bytes().decode(),
                        binds,
                        database=database or "default",
                    )
                except QueryError as exc:
                    raise _RequestError(164, f"{exc} (READONLY)") from exc
            if database:
                conn.query(f"USE {_identifier(database)}")
            # Like a server, apply the request's settings together: readonly last, so that a client asking
            # for readonly = 1 can still send its other settings in the same request.
            for key, value in sorted(settings.items(), key=lambda kv: kv[0] == "readonly"):
                if not _SETTING_RE.match(key):
                    raise _RequestError(115, f"Unknown setting {key!r}")
                conn.query(f"SET {key} = {_quote(value)}")
            fmt = params.get("default_format", "TabSeparated")
            match = _FORMAT_RE.search(sql)
            if match:
                fmt = match.group(1)
            if insert:
                with tempfile.NamedTemporaryFile(prefix="cadr-insert-", delete=False) as fh:
                    fh.write(body)
                    tmp_path = fh.name
                cols = insert.group("cols") or ""
                extra = f" SETTINGS {insert.group('settings')}" if insert.group("settings") else ""
                infile = f"FROM INFILE {_quote(tmp_path)}{extra} FORMAT {fmt}"
                sql = f"INSERT INTO {insert.group('table')} {cols} {infile}"
                result = conn.query(sql, "TabSeparated", params=binds)
                return b"", "", _summary(result, written=True)
            if gone is not None and gone.is_set():
                raise _RequestError(394, "Query was cancelled: the client closed the connection", status=499)
            result = conn.query(sql, fmt, params=binds)
            return result.bytes(), fmt, _summary(result)
        except _RequestError:
            raise
        except Exception as exc:
            raise _RequestError(_code(exc), _message(exc), status=500) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            if tmp_path:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)


def _identifier(name: str) -> str:
    if not _SETTING_RE.match(name):
        raise _RequestError(81, f"Database {name!r} is not a plain identifier")
    return name


def _code(exc: BaseException) -> int:
    match = _CODE_RE.search(str(exc))
    return int(match.group(1)) if match else 1000


def _message(exc: BaseException) -> str:
    text = str(exc)
    idx = text.find("DB::Exception: ")
    return (text[idx + len("DB::Exception: ") :] if idx >= 0 else text).strip()


def _summary(result: Any, written: bool = False) -> dict[str, str]:
    rows = bytes_read = 0
    with contextlib.suppress(Exception):
        rows = int(result.rows_read())
        bytes_read = int(result.bytes_read())
    key = "written" if written else "read"
    return {f"{key}_rows": str(rows), f"{key}_bytes": str(bytes_read), "elapsed_ns": "0"}


def main(argv: list[str] | None = None) -> int:
    """Run an endpoint in the foreground (used by tests as a stand-in ClickHouse server)."""
    parser = argparse.ArgumentParser(description="ClickHouse HTTP interface over a chdb directory (loopback)")
    parser.add_argument("--dsn", required=True, help="chdb:///<dir> to serve")
    parser.add_argument(
        "--port", type=int, default=0, help="port to bind on 127.0.0.1 (default: a free port)"
    )
    parser.add_argument("--writable", action="store_true", help="accept writes (default: read-only)")
    parser.add_argument("--password", default="", help="required password (default: none)")
    parser.add_argument("--user", default="", help="required user name with the password (default: any)")
    parser.add_argument(
        "--tls-cert", default="", help="serve https with this PEM certificate (default: http)"
    )
    parser.add_argument("--tls-key", default="", help="the private key of --tls-cert (default: none)")
    parser.add_argument("--ready-file", default="", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import chdb

    # Open the engine (and take the directory lock) before listening, so a client never sees a half-started
    # server; a writable stand-in for a ClickHouse server starts with its database ready.
    target = parse_dsn(args.dsn)
    holder = chdb.connect(target.path)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key or None)
    endpoint = QueryEndpoint(
        args.dsn,
        port=args.port,
        writable=args.writable,
        password=args.password,
        user=args.user,
        ssl_context=context,
        write_info_file=False,
    ).start()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        Path(tmp).write_text(str(endpoint.port))
        os.replace(tmp, args.ready_file)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    endpoint.stop()
    holder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
