"""Issue 13, findings 1–3: `cadr query` is read-only for real, on every route, and cannot take the store down.

Routes: the store directory (nothing owns it), the owner's query endpoint (what `cadr up` / `cadr worker`
serve; found by `cadr query` through the endpoint file) and a server (the stand-in ClickHouse HTTP server, which
checks nothing itself: the refusal is cadr's). Each finding was reproduced on the code before the fix: the
`file()` queries printed the secret, the OUTFILE forms wrote the file, the endpoint had no memory limit, kept a
query running after its client left and queued every query past its pool.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import chdb
import pytest

from cadr.commands.query import run_query
from schemas.settings import Settings
from streams.forensics.named import bind_params, load_named_queries
from streams.forensics.reader import open_reader
from streams.store.endpoint import QueryEndpoint, read_endpoint_info
from streams.store.errors import QueryError, StoreBusyError
from streams.store.guard import ALLOWED_TABLE_FUNCTIONS, DENIED_TABLE_FUNCTIONS, check_statement
from streams.store.limits import QueryLimits
from streams.store.sink import StoreWriter
from tests.streams.store.clickhouse_http import ClickHouseHttp
from tests.streams.store.support import payloads

SECRET = "cadr-secret-7f3a"


def _host_reads(secret: Path) -> list[str]:
    p = str(secret)
    return [
        f"SELECT file('{p}')",
        f"SELECT `file`('{p}') AS x",
        f"SELECT upper(file('{p}'))",
        f"SELECT (SELECT file('{p}'))",
        f"WITH s AS (SELECT file('{p}') AS v) SELECT v FROM s",
        f"SELECT arrayMap(p -> file(p), ['{p}'])",
        f"SELECT count() FROM events WHERE event_id IN (SELECT file('{p}'))",
        f"SELECT * FROM view(SELECT file('{p}'))",
        f"SELECT * FROM (SELECT 1) AS a JOIN (SELECT file('{p}') AS v) AS b ON 1",
        f"SELECT * FROM file('{p}', 'LineAsString')",
        f"DESCRIBE (SELECT file('{p}'))",
        f"EXPLAIN SYNTAX SELECT file('{p}')",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
        "SELECT * FROM cluster('default', system.one)",
        "SELECT * FROM input('a String')",
        "SELECT * FROM remote('127.0.0.1:9', system.one)",
        "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV')",
        "SELECT * FROM merge('system', '^certificates$')",
        "SELECT dictGet('d', 'a', toUInt64(1))",
        "SELECT * FROM system.certificates",
        "SELECT * FROM executable('id', 'LineAsString')",
        "SELECT hostName(), getOSKernelVersion()",
    ]


OUTFILE_FORMS = [
    "SHOW TABLES INTO OUTFILE '{out}' TRUNCATE",
    "SHOW DATABASES INTO OUTFILE '{out}' APPEND",
    "DESCRIBE TABLE events INTO OUTFILE '{out}'",
    "EXPLAIN SELECT 1 INTO OUTFILE '{out}'",
    "EXISTS TABLE events INTO OUTFILE '{out}'",
    "SHOW CREATE TABLE events INTO OUTFILE '{out}'",
    "SELECT 1 INTO OUTFILE '{out}' AND STDOUT",
    "SELECT event_id FROM events UNION ALL SELECT 'x' INTO OUTFILE '{out}' FORMAT CSV",
    "SHOW PROCESSLIST INTO OUTFILE '{out}'",
]

SETTINGS_FORMS = [
    "SELECT count() FROM events SETTINGS max_memory_usage = 0",
    "SELECT count() FROM (SELECT * FROM events SETTINGS max_execution_time = 0)",
    "SET max_result_rows = 0",
]


def _settings(tmp_path: Path, dsn: str = "") -> Settings:
    s = Settings()
    s.data_dir = str(tmp_path / "data")
    s.store.dsn = dsn
    return s


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_text(SECRET)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path)
    Path(settings.data_dir).mkdir()
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events(payloads(100))
    return settings


@contextlib.contextmanager
def _endpoint(settings: Settings, limits: QueryLimits | None = None) -> Iterator[QueryEndpoint]:
    """The owner's endpoint over the store, as the worker serves it (the endpoint file included)."""
    path = settings.store_dsn.removeprefix("chdb://")
    holder = chdb.connect(path)  # the owner holds the engine open, as the worker does
    endpoint = QueryEndpoint(settings.store_dsn, limits=limits).start()
    try:
        yield endpoint
    finally:
        _kill_all(path)
        endpoint.stop()
        holder.close()


def _kill_all(path: str) -> None:
    conn = chdb.connect(path)
    try:
        conn.query("KILL QUERY WHERE query LIKE '%slow-probe%' AND query NOT LIKE '%KILL%' SYNC", "TSV")
    finally:
        conn.close()


def _assert_refused(settings: Settings, sql: str, params: dict[str, str] | None = None) -> None:
    with pytest.raises(QueryError) as info:
        out = run_query(settings, sql, params=params, fmt="csv")
        pytest.fail(f"not refused: {sql!r} printed {out[:200]!r}")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("route", ["directory", "endpoint"])
def test_host_and_network_functions_are_refused(store: Settings, secret: Path, route: str) -> None:
    with contextlib.ExitStack() as stack:
        if route == "endpoint":
            stack.enter_context(_endpoint(store))
            assert read_endpoint_info(store.store_dsn.removeprefix("chdb://")) is not None
        for sql in _host_reads(secret):
            _assert_refused(store, sql)
        # an Identifier parameter cannot smuggle in a denied table either
        _assert_refused(store, "SELECT * FROM {t:Identifier}", {"t": "system.certificates"})
        _assert_refused(
            store, "SELECT * FROM {d:Identifier}.{t:Identifier}", {"d": "system", "t": "certificates"}
        )
        _assert_refused(store, "SELECT * FROM {d:Identifier}.certificates", {"d": "system"})
        # and ordinary hunts still run on the same route
        assert run_query(store, "SELECT count() FROM events", fmt="csv") == b'"count()"\n100\n'


def test_host_functions_are_refused_through_a_server(tmp_path: Path, secret: Path) -> None:
    server = ClickHouseHttp(tmp_path / "ch").start()
    try:
        with StoreWriter(server.dsn) as writer:
            writer.write_events(payloads(20))
        settings = _settings(tmp_path, server.dsn)
        for sql in _host_reads(secret)[:4] + _host_reads(secret)[-3:]:
            _assert_refused(settings, sql)
        assert run_query(settings, "SELECT count() FROM events", fmt="csv") == b'"count()"\n20\n'
    finally:
        server.stop()


@pytest.mark.parametrize("route", ["directory", "endpoint"])
def test_every_outfile_form_is_refused(store: Settings, tmp_path: Path, route: str) -> None:
    with contextlib.ExitStack() as stack:
        if route == "endpoint":
            stack.enter_context(_endpoint(store))
        for i, form in enumerate(OUTFILE_FORMS):
            out = tmp_path / f"written-{i}.txt"
            with pytest.raises(QueryError, match="OUTFILE"):
                run_query(store, form.format(out=out), fmt="csv")
            assert not out.exists(), form


@pytest.mark.parametrize("route", ["directory", "endpoint"])
def test_the_session_limits_cannot_be_raised(store: Settings, route: str) -> None:
    with contextlib.ExitStack() as stack:
        if route == "endpoint":
            stack.enter_context(_endpoint(store))
        for sql in SETTINGS_FORMS:
            with pytest.raises(QueryError, match=r"SETTINGS|readonly|read-only"):
                run_query(store, sql, fmt="csv")


@pytest.mark.parametrize("route", ["directory", "endpoint"])
def test_a_query_over_the_memory_limit_fails_alone(store: Settings, route: str) -> None:
    """A query needing ~500 MB fails with ClickHouse's memory-limit error; the next query runs."""
    store.store.query_max_memory_bytes = 64 << 20
    heavy = "SELECT length(groupArray(number)) FROM numbers(60000000)"
    with contextlib.ExitStack() as stack:
        if route == "endpoint":
            stack.enter_context(_endpoint(store, QueryLimits.from_store_settings(store.store)))
        with pytest.raises(QueryError, match=r"memory limit|MEMORY_LIMIT_EXCEEDED"):
            run_query(store, heavy, fmt="csv")
        assert run_query(store, "SELECT count() FROM events", fmt="csv") == b'"count()"\n100\n'


def _start_slow_query(endpoint: QueryEndpoint, tag: str) -> socket.socket:
    """Send a long query to the endpoint over a raw connection and leave the connection open."""
    sql = f"SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 1 /* slow-probe {tag} */"
    body = sql.encode()
    request = (
        f"POST /?default_format=TSV HTTP/1.1\r\nHost: x\r\nX-ClickHouse-Key: {endpoint.password}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(("127.0.0.1", endpoint.port), timeout=10)
    sock.sendall(request)
    return sock


def _running(path: str, tag: str) -> int:
    conn = chdb.connect(path)
    try:
        out = conn.query(
            f"SELECT count() FROM system.processes WHERE query LIKE '%slow-probe {tag}%' "
            "AND query NOT LIKE '%system.processes%'",
            "TSV",
        )
        return int(out.bytes().strip() or 0)
    finally:
        conn.close()


def _wait(condition: object, what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_query_is_cancelled_when_its_client_goes_away(store: Settings) -> None:
    path = store.store_dsn.removeprefix("chdb://")
    with _endpoint(store) as endpoint:
        tag = uuid.uuid4().hex
        sock = _start_slow_query(endpoint, tag)
        _wait(lambda: _running(path, tag) == 1, "the slow query to run")
        sock.close()
        # Before: the query ran on to max_execution_time (300 s) after its client had left.
        _wait(lambda: _running(path, tag) == 0, "the query to be cancelled after its client left")
        assert run_query(store, "SELECT count() FROM events", fmt="csv") == b'"count()"\n100\n'


def test_a_full_endpoint_answers_busy_at_once(store: Settings) -> None:
    path = store.store_dsn.removeprefix("chdb://")
    limits = QueryLimits(concurrency=2)
    with _endpoint(store, limits) as endpoint:
        tag = uuid.uuid4().hex
        socks = [_start_slow_query(endpoint, tag) for _ in range(2)]
        try:
            _wait(lambda: _running(path, tag) == 2, "two slow queries to run")
            # Before: the third query waited behind the others (up to 300 s each).
            with pytest.raises(StoreBusyError, match="busy"):
                run_query(store, "SELECT count() FROM events", fmt="csv")
        finally:
            for sock in socks:
                sock.close()
        _wait(lambda: _running(path, tag) == 0, "the slow queries to be cancelled")
        assert run_query(store, "SELECT count() FROM events", fmt="csv") == b'"count()"\n100\n'


def test_named_queries_and_show_describe_explain_still_run(store: Settings) -> None:
    with open_reader(store) as reader:
        for query in load_named_queries().values():
            args = {p.name: "x" for p in query.params if p.required}
            for p in query.params:
                if p.required and p.type.startswith(("UInt", "Int")):
                    args[p.name] = "1"
            reader.raw(query.sql, bind_params(query, args, database="cadr"))
    for sql in [
        "SHOW TABLES",
        "DESCRIBE TABLE events",
        "EXISTS TABLE events",
        "SHOW CREATE TABLE events",
        "EXPLAIN SELECT count() FROM events",
        "EXPLAIN PLAN header = 1 SELECT count() FROM events",
        "WITH 1 AS a SELECT a",
        "SELECT * FROM numbers(3)",
        "SELECT name FROM system.tables WHERE database = 'cadr' LIMIT 1",
    ]:
        run_query(store, sql, fmt="csv")


def test_every_table_function_of_the_engine_is_classified() -> None:
    """A new engine version cannot add a table function that the guard lets through by not knowing it."""
    conn = chdb.connect(":memory:")
    try:
        names = conn.query("SELECT name FROM system.table_functions", "TSVRaw").bytes().decode().split()
    finally:
        conn.close()
    unknown = {n for n in names if n.lower() not in ALLOWED_TABLE_FUNCTIONS | DENIED_TABLE_FUNCTIONS}
    assert not unknown, f"classify these table functions in streams/store/guard.py: {sorted(unknown)}"


def test_the_check_is_the_engines_parse_not_a_string_match() -> None:
    """Text that only looks like a denied call is allowed; a real call in any spelling is refused."""
    conn = chdb.connect(":memory:")
    lock = threading.Lock()

    def run(q: str, p: dict[str, object]) -> str:
        with lock:
            return str(conn.query(q, "TSVRaw", params=p).bytes().decode())

    try:
        check_statement("SELECT 'file(/etc/passwd) INTO OUTFILE x' AS `file`", run)
        check_statement("SELECT 1 -- SELECT file('/etc/passwd')", run)
        for sql in ["SELECT FILE('/etc/passwd')", "SELECT system.file('/etc/passwd')", "SELECT 1; SELECT 2"]:
            with pytest.raises(QueryError):
                check_statement(sql, run)
    finally:
        conn.close()
