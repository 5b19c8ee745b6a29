"""Issue 13, finding 9 (store): ClickHouse reached with a user and a password from a secret, over TLS; store files
private to their owner.

A stand-in ClickHouse server (ClickHouse's HTTP interface over chdb, tests/streams/clickhouse_http.py) that serves
https only and requires a user and password. The worker's store stage and `cadr query` reach it with
``store.username``, ``store.password_file`` and ``store.ca_file``; a wrong password and an untrusted certificate
are refused. Before the change there were no such settings: every request went without credentials.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

import orjson
import pytest
import trustme

from cadr.commands.query import run_query
from cadr.kafka_local import LocalKafka
from cadr.runtime import spawn_cadr
from schemas.settings import Settings
from streams.store.client import StoreAccess
from streams.store.errors import StoreError
from streams.store.sink import StoreWriter
from tests.streams.store.clickhouse_http import ClickHouseHttp
from tests.streams.store.support import payloads


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = (tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.crt")
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return paths


def _settings(tmp_path: Path, dsn: str, password_file: Path, ca_file: Path) -> Settings:
    s = Settings()
    s.data_dir = str(tmp_path / "data")
    s.store.dsn = dsn
    s.store.username = "cadr_writer"
    s.store.password_file = str(password_file)
    s.store.ca_file = str(ca_file)
    return s


def test_the_store_is_reached_with_a_user_a_password_file_and_tls(
    tmp_path: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    password = secrets.token_urlsafe(18)
    secret = tmp_path / "store-password"
    secret.write_text(password + "\n")
    server = ClickHouseHttp(tmp_path / "ch", user="cadr_writer", password=password, tls=tls_files).start()
    try:
        settings = _settings(tmp_path, server.dsn, secret, tls_files[2])
        assert server.dsn.startswith("https://")
        with StoreWriter(server.dsn, access=StoreAccess.from_store_settings(settings.store)) as writer:
            writer.write_events(payloads(30))
        out = run_query(settings, "SELECT count() AS n FROM events", fmt="jsonl")
        assert orjson.loads(out)["n"] == "30" or orjson.loads(out)["n"] == 30

        wrong = tmp_path / "wrong-password"
        wrong.write_text("guess")
        with pytest.raises(StoreError, match=r"516|Authentication|password"):
            run_query(_settings(tmp_path, server.dsn, wrong, tls_files[2]), "SELECT 1")
        other_ca = tmp_path / "other-ca.crt"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        with pytest.raises(StoreError, match=r"(?i)certificate|ssl"):
            run_query(_settings(tmp_path, server.dsn, secret, other_ca), "SELECT 1")
    finally:
        server.stop()


def _loose(top: Path) -> list[tuple[str, str]]:
    """Paths under ``top`` (itself included) that grant anything to group or others."""
    found = []
    for root, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                found.append((path, oct(mode)))
    return found


def test_the_store_directory_is_owner_only(tmp_path: Path) -> None:
    settings = Settings()
    settings.data_dir = str(tmp_path / "data")
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events(payloads(20))
    assert stat.S_IMODE(Path(settings.store_dsn.removeprefix("chdb://")).stat().st_mode) == 0o700


def test_cadr_worker_writes_a_private_store(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    """`cadr worker` as a user starts it: every file of its event store is 0600 and every directory 0700
    (before: 0644 / 0755, readable by every local user)."""
    settings = Settings()
    settings.data_dir = str(tmp_path / "data")
    settings.kafka.bootstrap = kafka_broker.bootstrap
    settings.kafka.topic_prefix = topic_prefix
    settings.kafka.partitions = 1
    settings.worker.app_id = f"{topic_prefix}app"
    store = tmp_path / "data" / "store"
    with spawn_cadr("worker", ["worker"], settings, {"CADR_STORE_QUERY_PORT": "0"}) as worker:
        # the endpoint file is written once the store is open and its tables exist
        deadline = time.monotonic() + 120
        while not (store / "cadr-query-endpoint.json").exists():
            assert worker.alive(), worker.tail(60)
            assert time.monotonic() < deadline, "the worker did not open its store in time"
            time.sleep(0.2)
    assert (store / "cadr" / "events").exists() or any(store.rglob("*events*")), "no events table written"
    loose = _loose(store)
    assert not loose, f"{len(loose)} store paths readable by others, e.g. {loose[:5]}"
