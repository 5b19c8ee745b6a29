"""Apply the numbered ClickHouse migrations of ``deploy/clickhouse/`` (idempotent, chdb and server alike).

A migration is ``NNN_name.sql``: statements separated by a ``;`` at the end of a line, with ``${database}``
and ``${retention_days}`` substituted. Every statement is itself idempotent (``IF NOT EXISTS``), and applied
versions are recorded in ``<database>.schema_migrations``, so running the migrations at every start is cheap
and a process killed half-way through a migration re-runs it safely. The retention TTL follows the settings:
when ``retention_days`` changes, the TTL of the tables that have one is altered in place.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from streams.store.client import wrap_error
from streams.store.errors import MigrationError

__all__ = [
    "DEFAULT_MIGRATIONS_DIR",
    "RETENTION_TABLES",
    "Migration",
    "apply_migrations",
    "apply_retention",
    "load_migrations",
    "split_statements",
]

log = logging.getLogger(__name__)

#: the repository's migration folder (deploy/ holds no Python; the runner finds it beside the packages)
DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse"

#: tables whose TTL is the configured retention (counted from ingestion)
RETENTION_TABLES = ("events", "alerts")

_NAME_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TTL_RE = re.compile(r"toIntervalDay\((\d+)\)")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def statements(self, database: str, retention_days: int) -> list[str]:
        text = self.text.replace("${database}", database).replace(
            "${retention_days}", str(int(retention_days))
        )
        if "${" in text:
            raise MigrationError(f"{self.path}: unknown placeholder {text[text.index('${') :][:30]!r}")
        return split_statements(text)


def split_statements(text: str) -> list[str]:
    """Split SQL on ``;`` at the end of a line; ``--`` comment lines are dropped."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        if stripped.endswith(";"):
            current.append(line.rstrip()[:-1].rstrip())
            statements.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]


def load_migrations(directory: Path = DEFAULT_MIGRATIONS_DIR) -> list[Migration]:
    """The migrations of ``directory`` in version order (file names ``NNN_name.sql``)."""
    if not directory.is_dir():
        raise MigrationError(f"migration folder {directory} does not exist")
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration file names are NNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return found


def _check_ident(name: str) -> str:
    if not _IDENT_RE.match(name):
        raise MigrationError(f"database name {name!r} is not a plain identifier")
    return name


def apply_migrations(
    client: Client,
    database: str,
    retention_days: int,
    directory: Path = DEFAULT_MIGRATIONS_DIR,
) -> list[int]:
    """Create ``database`` and apply every migration not yet recorded; returns the versions applied now."""
    db = _check_ident(database)
    if retention_days < 1:
        raise MigrationError(f"retention_days must be at least 1, got {retention_days}")
    migrations = load_migrations(directory)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, checksum String, applied DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY version"
        )
        done = {
            int(row[0]) for row in client.query(f"SELECT version FROM {db}.schema_migrations").result_rows
        }
    except ClickHouseError as exc:
        raise wrap_error(exc, f"preparing database {db}") from exc
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements(db, retention_days):
            try:
                client.command(statement)
            except ClickHouseError as exc:
                first = statement.splitlines()[0][:80]
                raise MigrationError(
                    f"{migration.path.name}: {first!r}: {wrap_error(exc, 'statement')}"
                ) from exc
        try:
            client.insert(
                f"{db}.schema_migrations",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
        except ClickHouseError as exc:
            raise wrap_error(exc, f"recording migration {migration.path.name}") from exc
        log.info("applied migration %s", migration.path.name)
        applied.append(migration.version)
    apply_retention(client, db, retention_days)
    return applied


def apply_retention(client: Client, database: str, retention_days: int) -> list[str]:
    """Set the TTL of the retention tables to ``retention_days`` where it differs; returns the tables altered.

    Existing parts are not rewritten (``materialize_ttl_after_modify = 0``): with ``ttl_only_drop_parts`` a
    whole daily part is dropped once every row in it has expired, at the next TTL merge.
    """
    db = _check_ident(database)
    altered: list[str] = []
    for table in RETENTION_TABLES:
        try:
            rows = client.query(
                "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                parameters={"db": db, "t": table},
            ).result_rows
        except ClickHouseError as exc:
            raise wrap_error(exc, f"reading the TTL of {db}.{table}") from exc
        if not rows:
            continue
        match = _TTL_RE.search(str(rows[0][0]))
        if match and int(match.group(1)) == int(retention_days):
            continue
        try:
            client.command(
                f"ALTER TABLE {db}.{table} MODIFY TTL "
                f"toDateTime(ingested) + toIntervalDay({int(retention_days)})",
                settings={"materialize_ttl_after_modify": 0},
            )
        except ClickHouseError as exc:
            raise wrap_error(exc, f"changing the TTL of {db}.{table}") from exc
        altered.append(table)
    return altered
