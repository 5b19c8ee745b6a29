"""Shared helpers for the store and forensics tests (synthetic events, store inspection)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import encode
from schemas.records import Event, File, Network, Process, Workload
from streams.store.client import open_client
from streams.store.dedup import Coord
from tests.streams.forensics.synth import ClusterModel, generate

__all__ = [
    "chdb_dsn",
    "coords",
    "encoded",
    "event",
    "event_ids",
    "net_event",
    "payloads",
    "rows",
    "small_model",
    "store_counts",
]


def small_model(seed: int = 3) -> ClusterModel:
    return ClusterModel(namespaces=3, workloads_per_namespace=3, max_replicas=2, nodes=2, seed=seed)


def payloads(n: int, *, seed: int = 3, attack_at: float | None = 0.5) -> list[bytes]:
    """``n`` synthetic events (JSON) of a small cluster, in time order."""
    return [v for _, v in generate(n, small_model(seed), attack_at=attack_at)]


def coords(n: int, *, topic: str = "t.events", partition: int = 0, start: int = 0) -> list[Coord | None]:
    return [Coord(topic, partition, start + i) for i in range(n)]


def event(event_id: str, t: int = 1_790_000_000_000_000_000, **blocks: Any) -> Event:
    """A hand-made event (defaults: a file_open in pod ns/p)."""
    fields: dict[str, Any] = {
        "event_id": event_id,
        "time": t,
        "node": "n1",
        "source": "test",
        "kind": "file_open",
        "workload": Workload(
            cluster="c", namespace="ns", pod="p", workload_name="w", workload_kind="Deployment"
        ),
        "process": Process(pid=10, exe="/bin/cat", args=["cat", "/etc/shadow"], exec_id="e1"),
        "file": File(path="/etc/shadow"),
    }
    fields.update(blocks)
    return Event(**fields)


def net_event(event_id: str, **kw: Any) -> Event:
    kw.setdefault("network", Network(dst_ip="10.0.0.1", dst_port=443))
    return event(event_id, kind="net_connect", file=None, **kw)


@contextlib.contextmanager
def _client(dsn: str) -> Iterator[Any]:
    client = open_client(dsn, readonly=True)
    try:
        yield client
    finally:
        client.close()


def rows(dsn: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with _client(dsn) as client:
        return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def store_counts(dsn: str, table: str = "cadr.events") -> tuple[int, int]:
    """(rows, distinct event ids) — equal means no duplicate row."""
    ((total, distinct),) = rows(dsn, f"SELECT count(), uniqExact(event_id) FROM {table}")
    return int(total), int(distinct)


def encoded(events: list[Event]) -> list[bytes]:
    return [encode(e) for e in events]


def event_ids(values: list[bytes]) -> set[str]:
    return {orjson.loads(v)["event_id"] for v in values}


def chdb_dsn(path: Path) -> str:
    return f"chdb://{path}"
