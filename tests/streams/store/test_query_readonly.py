"""`cadr query` is read-only at the engine: writes, DDL and SYSTEM are refused, whatever the route."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cadr.commands.query import run_query
from schemas.settings import Settings
from streams.store.client import client_for
from streams.store.errors import QueryError
from streams.store.sink import StoreWriter
from tests.streams.store.clickhouse_http import ClickHouseHttp
from tests.streams.store.support import payloads

WRITES = [
    "INSERT INTO events (event_id) VALUES ('x')",
    "INSERT INTO FUNCTION file('out.csv') SELECT 1",
    "ALTER TABLE events DELETE WHERE 1",
    "ALTER TABLE events DROP COLUMN raw",
    "DROP TABLE events",
    "TRUNCATE TABLE events",
    "CREATE TABLE x (a UInt8) ENGINE = Memory",
    "RENAME TABLE events TO e2",
    "OPTIMIZE TABLE events FINAL",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
]
SYSTEM = [
    "SYSTEM STOP MERGES",
    "SYSTEM FLUSH LOGS",
    "SYSTEM DROP MARK CACHE",
    "KILL QUERY WHERE 1",
    "SELECT 1; DROP TABLE events",
    "SELECT 1 INTO OUTFILE 'leak.csv'",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
]


def _settings(tmp_path: Path, dsn: str = "") -> Settings:
    s = Settings()
    s.data_dir = str(tmp_path)
    s.store.dsn = dsn
    return s


def _count(settings: Settings) -> int:
    return int(orjson.loads(run_query(settings, "SELECT count() AS n FROM events", fmt="jsonl"))["n"])


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path)
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events(payloads(200))
    return settings


def test_the_engine_itself_refuses_writes_on_a_readonly_handle(store: Settings) -> None:
    """Server-side proof without cadr's statement check: a readonly handle refuses every write."""
    with client_for(store.store_dsn, readonly=True, database="cadr") as client:
        for sql in WRITES:
            with pytest.raises(Exception, match=r"READONLY|readonly"):
                client.command(sql)
        assert client.query("SELECT count() FROM events").result_rows == [(200,)]


@pytest.mark.parametrize("sql", WRITES + SYSTEM)
def test_cadr_query_refuses_writes_ddl_and_system_on_the_directory(
    store: Settings, sql: str, tmp_path: Path
) -> None:
    with pytest.raises(QueryError):
        run_query(store, sql)
    assert _count(store) == 200
    assert not (tmp_path / "leak.csv").exists()


def test_cadr_query_refuses_writes_through_a_server(tmp_path: Path) -> None:
    server = ClickHouseHttp(tmp_path / "ch").start()
    try:
        with StoreWriter(server.dsn) as writer:
            writer.write_events(payloads(50))
        settings = _settings(tmp_path, server.dsn)
        for sql in WRITES[:5] + SYSTEM[:1]:
            with pytest.raises(QueryError, match=r"READONLY|readonly|read-only"):
                run_query(settings, sql)
        assert run_query(settings, "SELECT count() FROM events", fmt="csv") == b'"count()"\n50\n'
    finally:
        server.stop()


def test_output_formats(store: Settings) -> None:
    sql = "SELECT event_id, args FROM events WHERE event_id = 'attack-2'"
    assert b"attack-2" in run_query(store, sql, fmt="table")
    assert run_query(store, sql, fmt="jsonl") == b'{"event_id":"attack-2","args":["bash","-i"]}\n'
    assert run_query(store, sql, fmt="csv") == b'"event_id","args"\n"attack-2","[\'bash\',\'-i\']"\n'
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(run_query(store, sql, fmt="parquet")))
    assert table.column("event_id").to_pylist() == [b"attack-2"] or table.column("event_id").to_pylist() == [
        "attack-2"
    ]


def test_server_bound_parameters_in_free_sql(store: Settings) -> None:
    out = run_query(
        store,
        "SELECT count() AS n FROM events WHERE event_id = {id:String}",
        params={"id": "attack-2"},
        fmt="jsonl",
    )
    assert int(orjson.loads(out)["n"]) == 1
