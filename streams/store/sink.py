"""The blocking store writer: decode a batch, drop what is already stored, insert, retry until it sticks.

Everything here blocks (chdb calls hold the thread) and runs on the store service's executor thread, never on
the event loop. ``write_*`` returns only when ClickHouse has accepted the batch — the caller commits Kafka
offsets after that and never before — or raises :class:`StoreUnavailableError` when asked to stop while the
store is still unreachable (nothing is committed then, so the batch is redelivered).

Failures are sorted into two kinds. Transport errors and server errors that mean "not now" (timeouts, memory,
too many parts, a read-only replica ...) are retried forever with capped exponential backoff: a store outage
holds the pipeline back, it never drops data. Errors that mean "this data is bad" (a value ClickHouse cannot
parse or convert) are retried a few times, then the batch is split in halves until the bad rows are isolated;
those rows are counted and logged with their event id, the rest is stored.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import pyarrow as pa

from schemas.codec import decode, is_batch, split_batch
from schemas.errors import RecordError
from schemas.records import Alert, Event, Incident, Profile
from streams.store import columns
from streams.store.client import Client, StoreAccess, open_client, wrap_error
from streams.store.dedup import Coord, DedupGuard, offset_ranges
from streams.store.errors import QueryError, StoreError, StoreUnavailableError
from streams.store.migrations import apply_migrations
from streams.store.raw_insert import RawInserter, ingest_body, open_raw_inserter

__all__ = ["Backoff", "RecordKind", "StoreWriter", "WriteReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# ClickHouse error codes meaning "the data is bad" (parse/convert failures): retrying cannot help.
_DATA_ERROR_CODES = {6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 349, 1001}
_CODE_RE = re.compile(r"Code: (\d+)\.")
_DATA_ATTEMPTS = 3
# optimize_on_insert folds same-key rows of a ReplacingMergeTree block at insert time — work the sink already
# did (typed path: repeats dropped here; fast path: LIMIT 1 BY in the view). Off, inserts run ~1.7x faster.
_INSERT_SETTINGS = {"optimize_on_insert": 0}

#: logical record kinds the writer stores, with their table, record type and builder
RecordKind = str
_KINDS: dict[str, tuple[str, type[Any], Callable[..., pa.Table]]] = {
    "events": ("events", Event, columns.events_table),
    "alerts": ("alerts", Alert, columns.alerts_table),
    "incidents": ("incidents", Incident, columns.incidents_table),
    "profiles": ("profiles", Profile, columns.profiles_table),
}


@dataclass
class Backoff:
    """Capped exponential backoff between attempts."""

    initial_s: float = 0.2
    maximum_s: float = 5.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.maximum_s, delay * self.factor)


@dataclass
class WriteReport:
    """What happened to one batch."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    attempts: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (batch index, reason)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoding a batch allocates ~10 container objects per event; the cyclic GC would rescan the growing heap
    # many times per batch (measured: decoding 2-3x slower). Nothing in a batch forms cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _error_code(exc: BaseException) -> int:
    match = _CODE_RE.search(str(exc))
    return int(match.group(1)) if match else 0


def _classify(exc: BaseException, what: str) -> tuple[StoreError, bool]:
    """``exc`` in cadr's error tree, and whether the server refused the data itself (a parse or conversion
    failure: sending the same bytes again cannot help)."""
    error = exc if isinstance(exc, StoreError) else wrap_error(exc, what)
    return error, isinstance(error, QueryError) and _error_code(error) in _DATA_ERROR_CODES


class StoreWriter:
    """Writes batches of records to one ClickHouse database; one writer per thread (no shared clients)."""

    def __init__(
        self,
        dsn: str,
        *,
        database: str = "cadr",
        consumer: str = "cadr-store",
        retention_days: int = 30,
        backoff: Backoff | None = None,
        stop: threading.Event | None = None,
        migrate: bool = True,
        fast_path: bool = True,
        client_factory: Callable[..., Client] = open_client,
        inserter_factory: Callable[[Client, str], RawInserter] = open_raw_inserter,
        access: StoreAccess | None = None,
    ) -> None:
        self.dsn = dsn
        #: credentials and TLS checks for a server (store.username / password_file / ca_file)
        self.access = access
        self.database = database
        self.consumer = consumer
        self.retention_days = retention_days
        self.backoff = backoff or Backoff()
        self.stop = stop or threading.Event()
        self.migrate = migrate
        #: insert unsuspicious event batches as raw JSON, flattened by the server (see write_events)
        self.fast_path = fast_path
        self._retry_all_suspect = False
        self._client_factory = client_factory
        self._client: Client | None = None
        self._inserter_factory = inserter_factory
        self._inserter: RawInserter | None = None
        self.guard = DedupGuard()
        self._decoders = {kind: msgspec.json.Decoder(type_) for kind, (_, type_, _) in _KINDS.items()}
        self.totals = WriteReport()
        #: failed store calls so far (each one is followed by a backoff pause, then a retry)
        self.failures = 0

    # -- connection -------------------------------------------------------------------------------------

    def open(self) -> StoreWriter:
        """Connect and apply migrations, retrying while the store is unavailable."""
        self._retry("opening the store", self._client_or_connect)
        return self

    def close(self) -> None:
        if self._inserter is not None:
            with contextlib.suppress(Exception):
                self._inserter.close()
            self._inserter = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def __enter__(self) -> StoreWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> Client:
        return self._client_or_connect()

    def _client_or_connect(self) -> Client:
        if self._client is None:
            client = (
                self._client_factory(self.dsn, access=self.access)
                if self.access is not None
                else self._client_factory(self.dsn)
            )
            try:
                if self.migrate:
                    apply_migrations(client, self.database, self.retention_days)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            self._client = client
        return self._client

    @property
    def inserter(self) -> RawInserter:
        if self._inserter is None:
            self._inserter = self._inserter_factory(self.client, self.dsn)
        return self._inserter

    def _drop_client(self) -> None:
        # After a transport failure start over with a fresh client (and pool) on the next attempt.
        if self._client is not None and not self.dsn.startswith("chdb:"):
            self.close()

    # -- retry ------------------------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T], report: WriteReport | None = None) -> T:
        """Run an idempotent store call until it succeeds (or the writer is stopped)."""
        delays = self.backoff.delays()
        while True:
            if report is not None:
                report.attempts += 1
            try:
                return fn()
            except Exception as exc:
                error, data_error = _classify(exc, what)
                if data_error:
                    raise error from exc
                self._drop_client()
                self._pause(what, error, delays)

    # -- events -----------------------------------------------------------------------------------------

    def reset_horizons(self) -> None:
        """Partitions moved (rebalance): re-read the horizons before the next batch."""
        self.guard.reset()

    def write_events(
        self, values: Sequence[bytes], coords: Sequence[Coord | None] | None = None
    ) -> WriteReport:
        """Store Kafka record values of the events topic: each one event (a JSON object) or an event batch (a
        JSON array of them, see :mod:`schemas.codec`); ``coords`` are the records' Kafka coordinates, for exact
        dedup.

        Fast path (the common case: nothing in the batch can already be stored): the values go to the server
        as they came and ClickHouse splits and flattens them (``events_ingest``, migrations 006-007); Python
        does no per-event work. Batches with suspects — redelivered after a restart or rebalance, or replayed —
        take the typed path: split, decoded, checked against the table by event id, built column by column.
        """
        report = WriteReport()
        coords = list(coords) if coords is not None else [None] * len(values)
        if len(coords) != len(values):
            raise ValueError("one coordinate per record")
        if self.fast_path and values and self._nothing_suspect(values, coords, report):
            try:
                self._insert_raw(values, coords, report)
                self._account(report)
                return report
            except _InsertFailed as exc:
                # Unknown whether (part of) it landed: continue on the typed path, checking the whole batch.
                if not exc.data_error:
                    self._pause(f"inserting into {self.database}.events_ingest", exc, self.backoff.delays())
                self._retry_all_suspect = True
        payloads, event_coords = _split_records(values, coords)
        report.received = len(payloads)
        events, raws, kept_coords = self._decode("events", payloads, event_coords, report)
        if report.rejects:
            self._store_rejects(payloads, report)
        if events:
            events, raws, kept_coords = self._drop_repeats(events, raws, kept_coords, report)
        if events:
            self._insert_events(events, raws, kept_coords, report)
        self._account(report)
        return report

    def _nothing_suspect(
        self, values: Sequence[bytes], coords: list[Coord | None], report: WriteReport
    ) -> bool:
        if any(c is not None for c in coords) and not self.guard.loaded:
            self._retry("reading sink horizons", self._load_horizons, report)
        # The replay mark, as every cadr encoder writes it (compact JSON); a producer writing it differently
        # only loses the exact check (the ReplacingMergeTree still folds the duplicate).
        replayed = [b'"replayed":true' in v for v in values]
        return not self.guard.suspects(coords, replayed)

    def _insert_raw(self, values: Sequence[bytes], coords: list[Coord | None], report: WriteReport) -> None:
        self._retry("recording sink intents", functools.partial(self._record_intents, coords), report)
        body, fmt = ingest_body(values)
        full = f"{self.database}.events_ingest"
        report.attempts += 1
        try:
            written = self.inserter.insert(self.client, full, "raw", body, fmt, _INSERT_SETTINGS)
        except Exception as exc:
            error, data_error = _classify(exc, f"inserting into {full}")
            if not data_error:
                self._drop_client()
            else:
                # e.g. an array holding a non-object: the typed path names and rejects the bad elements
                log.info("store: the server refused a raw event batch (%s); taking the typed path", error)
            raise _InsertFailed(str(error), data_error=data_error) from exc
        # Rows read into events_ingest: the events of the batch (those without an event id are counted here
        # too; they are in events_rejected with the reason).
        events = written or _count_events(values)
        report.received += events
        report.inserted += events

    def _store_rejects(self, payloads: Sequence[bytes], report: WriteReport) -> None:
        # What the typed path refuses goes where the fast path's refusals go, with the field named.
        table = pa.table(
            {
                "raw": pa.array([payloads[i] for i, _ in report.rejects], type=pa.binary()),
                "reason": pa.array([reason for _, reason in report.rejects], type=pa.string()),
            }
        )
        full = f"{self.database}.events_rejected"
        self._retry(
            f"inserting into {full}", functools.partial(self.client.insert_arrow, full, table), report
        )

    def _drop_repeats(
        self, events: list[Event], raws: list[bytes], coords: list[Coord | None], report: WriteReport
    ) -> tuple[list[Event], list[bytes], list[Coord | None]]:
        # The same event twice in one batch (an upstream producer retry) is stored once.
        seen: set[str] = set()
        keep: list[int] = []
        for i, e in enumerate(events):
            if e.event_id not in seen:
                seen.add(e.event_id)
                keep.append(i)
        if len(keep) == len(events):
            return events, raws, coords
        report.duplicates += len(events) - len(keep)
        return [events[i] for i in keep], [raws[i] for i in keep], [coords[i] for i in keep]

    def _insert_events(
        self, events: list[Event], raws: list[bytes], coords: list[Coord | None], report: WriteReport
    ) -> None:
        if not self.guard.loaded and any(c is not None for c in coords):
            self._retry("reading sink horizons", self._load_horizons, report)
        if self._retry_all_suspect:
            self._retry_all_suspect = False
            suspects = list(range(len(events)))
        else:
            suspects = self.guard.suspects(coords, [e.replayed for e in events])
        delays = self.backoff.delays()
        while True:
            if suspects:
                stored = self._retry(
                    "checking for stored events",
                    functools.partial(self._stored_ids, events, suspects),
                    report,
                )
                if stored:
                    keep = [i for i, e in enumerate(events) if e.event_id not in stored]
                    report.duplicates += len(events) - len(keep)
                    events = [events[i] for i in keep]
                    raws = [raws[i] for i in keep]
                    coords = [coords[i] for i in keep]
                if not events:
                    return
            self._retry("recording sink intents", functools.partial(self._record_intents, coords), report)
            with _gc_paused():
                table = columns.events_table(events, raws)
            try:
                report.inserted += self._insert_table("events", table, report, [e.event_id for e in events])
                return
            except _InsertFailed as exc:
                # The server may have stored (part of) the batch before failing: check all of it next time.
                suspects = list(range(len(events)))
                self._pause(f"inserting into {self.database}.events", exc, delays)

    def _load_horizons(self) -> None:
        rows = self.client.query(
            f"SELECT topic, partition, max(last_offset) FROM {self.database}.sink_log "
            "WHERE consumer = {c:String} GROUP BY topic, partition",
            parameters={"c": self.consumer},
        ).result_rows
        self.guard.load({(str(t), int(p)): int(o) for t, p, o in rows})

    def _record_intents(self, coords: Sequence[Coord | None]) -> None:
        ranges = offset_ranges(coords)
        if not ranges:
            return
        table = pa.table(
            {
                "consumer": pa.array([self.consumer] * len(ranges), type=pa.string()),
                "topic": pa.array([r.topic for r in ranges], type=pa.string()),
                "partition": pa.array([r.partition for r in ranges], type=pa.uint32()),
                "first_offset": pa.array([r.first_offset for r in ranges], type=pa.uint64()),
                "last_offset": pa.array([r.last_offset for r in ranges], type=pa.uint64()),
                "rows": pa.array([r.rows for r in ranges], type=pa.uint32()),
            }
        )
        self.client.insert_arrow(f"{self.database}.sink_log", table)

    def _stored_ids(self, events: Sequence[Event], indices: Sequence[int]) -> set[str]:
        ids = [events[i].event_id for i in indices]
        times = [events[i].time for i in indices]
        found: set[str] = set()
        chunk = 50_000
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            span = times[start : start + chunk]
            rows = self.client.query(
                f"SELECT DISTINCT event_id FROM {self.database}.events "
                "WHERE time >= fromUnixTimestamp64Nano({lo:Int64}, 'UTC') "
                "AND time <= fromUnixTimestamp64Nano({hi:Int64}, 'UTC') AND event_id IN {ids:Array(String)}",
                parameters={"lo": min(span), "hi": max(span), "ids": part},
            ).result_rows
            found.update(str(r[0]) for r in rows)
        return found

    # -- alerts, incidents, profiles --------------------------------------------------------------------

    def write_records(self, kind: RecordKind, payloads: Sequence[bytes]) -> WriteReport:
        """Store alerts, incidents or profiles. Their tables are ReplacingMergeTrees keyed by the record's
        identity (alert id, incident id + revision, profile key + revision), so a redelivered record folds
        into its first copy and readers use ``FINAL`` or the ``*_latest`` views."""
        if kind not in ("alerts", "incidents", "profiles"):
            raise ValueError(f"unknown record kind {kind!r}")
        report = WriteReport(received=len(payloads))
        records, raws, _ = self._decode(kind, payloads, [None] * len(payloads), report)
        if records:
            with _gc_paused():
                table = _KINDS[kind][2](records, raws)
            delays = self.backoff.delays()
            while True:
                try:
                    report.inserted += self._insert_table(_KINDS[kind][0], table, report)
                    break
                except _InsertFailed as exc:
                    self._pause(f"inserting into {self.database}.{kind}", exc, delays)
        self._account(report)
        return report

    # -- shared -----------------------------------------------------------------------------------------

    def _decode(
        self, kind: str, payloads: Sequence[bytes], coords: Sequence[Coord | None], report: WriteReport
    ) -> tuple[list[Any], list[bytes], list[Coord | None]]:
        decoder = self._decoders[kind]
        records: list[Any] = []
        raws: list[bytes] = []
        kept: list[Coord | None] = []
        type_ = _KINDS[kind][1]
        with _gc_paused():
            for i, payload in enumerate(payloads):
                try:
                    records.append(decoder.decode(payload))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                    reason = _reject_reason(payload, type_)
                    report.rejected += 1
                    report.rejects.append((i, reason))
                    log.warning("store: rejected %s record at %s: %s", kind, coords[i], reason)
                    continue
                raws.append(bytes(payload))
                kept.append(coords[i])
        return records, raws, kept

    def _insert_table(
        self, table_name: str, table: pa.Table, report: WriteReport, ids: list[str] | None = None
    ) -> int:
        """Insert ``table`` in one attempt; on data errors retry, then bisect until the bad rows are isolated.

        Returns the rows inserted; raises :class:`_InsertFailed` when the store failed in a way that leaves
        unknown whether (part of) the table landed.
        """
        full = f"{self.database}.{table_name}"
        failures = 0
        while True:
            report.attempts += 1
            try:
                self.client.insert_arrow(full, table, settings=_INSERT_SETTINGS)
                return int(table.num_rows)
            except Exception as exc:
                error, data_error = _classify(exc, f"inserting into {full}")
                if not data_error:
                    self._drop_client()
                    raise _InsertFailed(str(error)) from exc
            failures += 1
            if failures < _DATA_ATTEMPTS:
                log.warning("insert into %s refused the data (attempt %d): %s", full, failures, error)
                continue
            if table.num_rows == 1:
                report.rejected += 1
                report.rejects.append((-1, str(error)))
                log.error("store: dropped a %s row ClickHouse refuses (%s): %s", table_name, ids, error)
                return 0
            half = table.num_rows // 2
            left = self._insert_table(table_name, table.slice(0, half), report, ids[:half] if ids else None)
            right = self._insert_table(table_name, table.slice(half), report, ids[half:] if ids else None)
            return left + right

    def _pause(self, what: str, error: BaseException, delays: Iterator[float]) -> None:
        self.failures += 1
        log.warning("%s failed (will retry): %s", what, error)
        if self.stop.wait(next(delays)):
            raise StoreUnavailableError(
                f"{what}: stopped while the store was unavailable ({error})"
            ) from error

    def _account(self, report: WriteReport) -> None:
        t = self.totals
        t.received += report.received
        t.inserted += report.inserted
        t.duplicates += report.duplicates
        t.rejected += report.rejected
        t.attempts += report.attempts


class _InsertFailed(Exception):
    """An insert failed in a way that leaves unknown whether it landed."""

    def __init__(self, message: str, *, data_error: bool = False) -> None:
        super().__init__(message)
        #: the server refused the data itself (not the transport): retrying the same bytes cannot help
        self.data_error = data_error


def _count_events(values: Sequence[bytes]) -> int:
    return sum(len(split_batch(v)) for v in values)  # a single event splits into itself


def _split_records(
    values: Sequence[bytes], coords: Sequence[Coord | None]
) -> tuple[list[bytes], list[Coord | None]]:
    """One payload per event: event batches split, each event keeping its record's coordinates. A malformed
    batch stays one payload (the decoder rejects it with the reason)."""
    payloads: list[bytes] = []
    out: list[Coord | None] = []
    for value, coord in zip(values, coords, strict=True):
        try:
            parts = split_batch(value)  # a single event splits into itself
        except RecordError:
            parts = [value]
        payloads.extend(parts)
        out.extend([coord] * len(parts))
    return payloads, out


def _reject_reason(payload: bytes, type_: type[Any]) -> str:
    # The batch decoder says little about *where*; the shared codec names the field ($.process.pid).
    if is_batch(payload):
        try:
            split_batch(payload)  # a batch left whole by _split_records: say what is wrong with it
        except RecordError as exc:
            return str(exc)
    try:
        decode(payload, type_)
    except RecordError as exc:
        return str(exc)
    except Exception as exc:  # pragma: no cover - defensive
        return f"{type(exc).__name__}: {exc}"
    return "record failed to decode"
