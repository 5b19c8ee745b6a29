"""Capture files: events as JSON lines (optionally zstd), written from the store or from a topic.

A capture is the plain wire form of ``cadr.events`` — one JSON event per line, in time order — so any tool can
read it, and ``cadr replay`` can publish it back. A name ending in ``.zst`` is zstd-compressed (streaming, so a
capture never has to fit in memory).

From the store, a selection is a time range plus optional filters (namespace, workload, pod, kind, node) bound
as server-side parameters, and optionally a raw SQL boolean expression (``--where``) which runs in the same
read-only session as ``cadr query``. Rows not yet folded by the ReplacingMergeTree are skipped by event id.
From a topic, every message present when the capture starts is read (optionally limited to a time range).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from schemas.errors import CadrError

__all__ = [
    "CaptureError",
    "Selection",
    "capture_from_store",
    "capture_from_topic",
    "open_capture_reader",
    "open_capture_writer",
    "read_capture",
    "store_selection",
]


class CaptureError(CadrError):
    """A capture file cannot be read or written, or a selection is invalid."""


@dataclass
class Selection:
    """Which stored events: ``since_ns <= time <= until_ns`` and every filter that is set."""

    since_ns: int
    until_ns: int
    namespace: str = ""
    workload: str = ""
    pod: str = ""
    kinds: list[str] = field(default_factory=list)
    node: str = ""
    where: str = ""
    limit: int = 0

    def sql(self, database: str, columns: str = "event_id, raw") -> tuple[str, dict[str, Any]]:
        """The SELECT (parameters bound by the server) in time order."""
        if self.until_ns < self.since_ns:
            raise CaptureError("the selection ends before it starts")
        params: dict[str, Any] = {"db": database, "lo": self.since_ns, "hi": self.until_ns}
        clauses = [
            "time >= fromUnixTimestamp64Nano({lo:Int64}, 'UTC')",
            "time <= fromUnixTimestamp64Nano({hi:Int64}, 'UTC')",
        ]
        for name, column in (("namespace", "namespace"), ("workload", "workload_name"), ("pod", "pod")):
            value = getattr(self, name)
            if value:
                clauses.append(f"{column} = {{{name}:String}}")
                params[name] = value
        if self.node:
            clauses.append("node = {node:String}")
            params["node"] = self.node
        if self.kinds:
            clauses.append("kind IN {kinds:Array(String)}")
            params["kinds"] = list(self.kinds)
        if self.where.strip():
            clauses.append(f"({self.where})")
        sql = f"SELECT {columns} FROM {{db:Identifier}}.events WHERE " + " AND ".join(clauses)
        sql += " ORDER BY time, event_id"
        if self.limit:
            sql += " LIMIT {limit:UInt64}"
            params["limit"] = self.limit
        return sql, params


# -- files ----------------------------------------------------------------------------------------------


def open_capture_writer(path: str | Path, *, compress: bool | None = None) -> IO[bytes]:
    """A binary writer for a capture file; zstd when ``compress`` (default: when the name ends in .zst)."""
    p = Path(path)
    use_zstd = p.suffix == ".zst" if compress is None else compress
    try:
        raw = p.open("wb")
    except OSError as exc:
        raise CaptureError(f"cannot write {p}: {exc}") from exc
    if not use_zstd:
        return raw
    import zstandard

    return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)


def open_capture_reader(path: str | Path) -> IO[bytes]:
    """A binary line reader for a capture file (zstd detected by its magic number)."""
    p = Path(path)
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise CaptureError(f"cannot read {p}: {exc}") from exc
    magic = raw.read(4)
    raw.seek(0)
    if magic == b"\x28\xb5\x2f\xfd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader)
    return raw


def read_capture(path: str | Path) -> Iterator[bytes]:
    """The events of a capture file as JSON bytes, one per line (blank lines skipped)."""
    with open_capture_reader(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            if not line.startswith(b"{"):
                raise CaptureError(f"{path}:{lineno}: not a JSON object")
            yield line


def write_lines(lines: Iterable[bytes], path: str | Path, *, compress: bool | None = None) -> int:
    """Write JSON lines to a capture file; returns the number written."""
    count = 0
    with open_capture_writer(path, compress=compress) as out:
        for line in lines:
            out.write(line.rstrip(b"\n") + b"\n")
            count += 1
    return count


# -- from the store ---------------------------------------------------------------------------------------


def store_selection(reader: Any, selection: Selection) -> Iterator[bytes]:
    """Stored events of ``selection`` (JSON bytes, time order, each event once) from a StoreReader."""
    sql, params = selection.sql(reader.database)
    seen: set[bytes] = set()
    pending = b""
    for chunk in reader.stream(sql, params, fmt="TSVRaw"):
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            event_id, _, raw = line.partition(b"\t")
            if not raw or event_id in seen:
                continue
            seen.add(event_id)
            yield raw
    if pending:
        event_id, _, raw = pending.partition(b"\t")
        if raw and event_id not in seen:
            yield raw


def capture_from_store(
    reader: Any, selection: Selection, path: str | Path, *, compress: bool | None = None
) -> int:
    """Write the stored events of ``selection`` to ``path``; returns how many."""
    return write_lines(store_selection(reader, selection), path, compress=compress)


# -- from a topic ---------------------------------------------------------------------------------------


async def _topic_messages(
    bootstrap: str,
    topic: str,
    since_ns: int | None,
    until_ns: int | None,
    on_batch: Callable[[list[bytes]], None],
    kafka_options: Mapping[str, Any] | None = None,
) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        **dict(kafka_options or {}),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    count = 0
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise CaptureError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            got = await consumer.getmany(*remaining, timeout_ms=1000)
            batch: list[bytes] = []
            for tp, records in got.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    if r.value is not None and _in_window(r.value, since_ns, until_ns):
                        batch.append(r.value)
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            if batch:
                on_batch(batch)
                count += len(batch)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return count


def _in_window(value: bytes, since_ns: int | None, until_ns: int | None) -> bool:
    if since_ns is None and until_ns is None:
        return True
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        t = orjson.loads(value).get("time")
        if isinstance(t, int):
            return (since_ns is None or t >= since_ns) and (until_ns is None or t <= until_ns)
    return False


def capture_from_topic(
    bootstrap: str,
    topic: str,
    path: str | Path,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    compress: bool | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> int:
    """Write every message of ``topic`` present now (within the time window, if any) to ``path``.

    Messages keep their order within each partition; the topics are keyed by workload, so a capture of a
    multi-partition topic is in per-workload order (what replay preserves), not in global time order.
    """
    with open_capture_writer(path, compress=compress) as out:

        def write(batch: list[bytes]) -> None:
            for value in batch:
                out.write(value.rstrip(b"\n") + b"\n")

        return asyncio.run(_topic_messages(bootstrap, topic, since_ns, until_ns, write, kafka_options))
