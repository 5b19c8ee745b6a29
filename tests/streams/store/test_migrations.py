"""Migrations of deploy/clickhouse/ on the embedded engine: idempotent, retention follows the settings."""

from __future__ import annotations

import re

import pytest

from streams.store.client import client_for
from streams.store.errors import MigrationError
from streams.store.migrations import apply_migrations, load_migrations, split_statements


def test_migration_files_are_numbered_and_parse() -> None:
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for m in migrations:
        statements = m.statements("cadr", 30)
        assert statements, m.path
        for s in statements:
            idempotent = "IF NOT EXISTS" in s or s.startswith("DROP VIEW IF EXISTS")
            assert idempotent, f"{m.path.name}: statements must be idempotent: {s[:60]}"


def test_the_parse_view_extracts_exactly_the_type_of_its_target_column(dsn: str) -> None:
    """007 writes the event tuple's type twice (events_parsed.j and the view's JSONExtract): they must agree,
    or the engine converts (or drops) fields silently between the two."""
    with client_for(dsn) as client:
        apply_migrations(client, "cadr", 30)
        ((column,),) = client.query(
            "SELECT type FROM system.columns WHERE database = 'cadr' AND table = 'events_parsed' AND name = 'j'"
        ).result_rows
        ((view,),) = client.query(
            "SELECT as_select FROM system.tables WHERE database = 'cadr' AND name = 'events_parse_mv'"
        ).result_rows
        start = view.index("JSONExtract(raw, '") + len("JSONExtract(raw, '")
        extracted = view[start : view.index("')", start)]
        blank = re.compile(r"(\\n|\s)+")  # as_select keeps the literal escaped (\\n)
        assert blank.sub("", extracted) == blank.sub("", column)


def test_split_statements_ignores_comments_and_keeps_inner_semicolons() -> None:
    text = "-- a comment; not a statement\nCREATE TABLE a (x String DEFAULT ';');\n\nSELECT 1\n;\nSELECT 2"
    assert split_statements(text) == ["CREATE TABLE a (x String DEFAULT ';')", "SELECT 1", "SELECT 2"]


def test_apply_twice_is_a_no_op_and_retention_follows_settings(dsn: str) -> None:
    with client_for(dsn) as client:
        applied = apply_migrations(client, "cadr", 30)
        assert applied == [m.version for m in load_migrations()]
        assert apply_migrations(client, "cadr", 30) == []
        tables = {
            r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'cadr'").result_rows
        }
        assert {"events", "alerts", "incidents", "profiles", "incidents_latest", "sink_log"} <= tables

        def ttl(table: str) -> str:
            return str(
                client.query(
                    "SELECT engine_full FROM system.tables WHERE database = 'cadr' AND name = {t:String}",
                    parameters={"t": table},
                ).result_rows[0][0]
            )

        assert "toIntervalDay(30)" in ttl("events")
        apply_migrations(client, "cadr", 7)
        assert "toIntervalDay(7)" in ttl("events") and "toIntervalDay(7)" in ttl("alerts")
        assert "PARTITION BY toDate(time)" in ttl("events")


def test_bad_database_name_is_refused(dsn: str) -> None:
    with client_for(dsn) as client, pytest.raises(MigrationError):
        apply_migrations(client, "cadr; DROP DATABASE x", 30)
