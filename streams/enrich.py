"""Stage 1 — enrich: ``cadr.raw`` → ``cadr.events`` (+ ``cadr.dlq``).

Decodes and validates each sensor record once, fills in what the sensor could not know
(cluster, node, the pod of a container id, the peer workload of a connection), and
re-keys the event by workload so every later stage sees one workload's events in order
on one partition. Anything that does not decode becomes a dead letter with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgspec

from schemas.codec import dead_letter, decode_event, decode_events, encode, is_batch, join_batch, split_batch
from schemas.errors import RecordError
from schemas.records import Event, Workload
from streams.lru import Lru

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = ["EnrichResult", "Enricher", "WorkloadLookup", "register", "workload_batches"]

log = logging.getLogger(__name__)


class WorkloadLookup(Protocol):
    """Pod metadata for a container id (sensors.k8s implements it from the API server)."""

    def resolve(self, container_id: str) -> Workload | None: ...


#: events per output record: large enough to amortize the per-record cost of Kafka and Faust,
#: small enough to keep one record far below the topic's message size limit
OUTPUT_BATCH_EVENTS = 500


def workload_batches(grouped: dict[bytes, list[bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """The ``cadr.events`` records for encoded events grouped by workload key: one event batch per workload,
    in order, of at most :data:`OUTPUT_BATCH_EVENTS` events (the framing the store and detect read)."""
    for key, encoded in grouped.items():
        for start in range(0, len(encoded), OUTPUT_BATCH_EVENTS):
            yield key, join_batch(encoded[start : start + OUTPUT_BATCH_EVENTS])


@dataclass
class EnrichResult:
    """One batch's output: (key, value) pairs for cadr.events and for cadr.dlq. Event values
    are batches (JSON arrays) of one workload's events, in order."""

    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[tuple[bytes, bytes]] = field(default_factory=list)
    decoded: list[Event] = field(default_factory=list)


@dataclass
class _Source:
    topic: str = ""
    partition: int | None = None
    offset: int | None = None


class Enricher:
    """Pure enrichment: bytes in, keyed event bytes and dead letters out."""

    def __init__(
        self,
        *,
        cluster: str,
        max_record_bytes: int,
        lookup: WorkloadLookup | None = None,
        ip_cache_size: int = 100_000,
    ) -> None:
        self.cluster = cluster
        self.max_record_bytes = max_record_bytes
        self.lookup = lookup
        # pod IP -> workload block, learned from events that carry the pod's own IP; lets a connection
        # name its peer workload (lateral movement) and an API call its acting pod without an API
        # round trip, when the sensors could not.
        self._ip_to_workload: Lru[str, Workload] = Lru(ip_cache_size)
        # container id -> its pod's workload block, learned from events that name both (another node's
        # sensor, an audit event about the pod): names the pod of events a sensor sent with the container
        # id alone (its pod watch did not know the pod in time)
        self._by_container: Lru[str, Workload] = Lru(ip_cache_size)
        #: unattributed: events that left with a container id and no pod (the metric of lost workloads);
        #: attributed_late: events that had only a container id and got their pod here
        self.counters = {"in": 0, "out": 0, "dead": 0, "unattributed": 0, "attributed_late": 0}

    def enrich_one(self, event: Event) -> Event:
        """Fill cluster, workload and peer fields in place; returns the event."""
        wl = event.workload
        if not wl.cluster:
            wl.cluster = self.cluster
        if wl.container_id and not wl.pod:
            found = self._by_container.get(wl.container_id)
            if found is None and self.lookup is not None:
                found = self.lookup.resolve(wl.container_id)
            if found is not None:
                event.workload = wl = msgspec.structs.replace(
                    found, container_id=wl.container_id, cluster=found.cluster or wl.cluster
                )
                self.counters["attributed_late"] += 1
            else:
                self.counters["unattributed"] += 1
        elif wl.container_id and wl.pod:
            # the newest answer (a pod IP or a label may have come since)
            self._by_container.put(wl.container_id, wl)
        if wl.pod_ip and not wl.is_host:
            # the newest block: the pod behind an IP changes when pods come and go
            self._ip_to_workload.put(wl.pod_ip, wl)
        net = event.network
        if net is not None and net.dst_ip and not net.peer_workload:
            peer = self._ip_to_workload.get(net.dst_ip)
            if peer is not None and peer.key() != wl.key():
                net.peer_workload = peer.key()
        audit = event.audit
        if audit is not None and audit.actor_workload is None and audit.source_ips:
            # the intake had no pod cache (or no answer): a call from a pod IP seen in other events
            for ip in audit.source_ips:
                actor = self._ip_to_workload.get(ip)
                if actor is not None:
                    audit.actor_workload = msgspec.structs.replace(
                        actor, container="", container_id="", image=""
                    )
                    break
        event.enriched = True
        return event

    def process(
        self,
        values: Sequence[bytes],
        sources: Sequence[tuple[str, int | None, int | None]] | None = None,
    ) -> EnrichResult:
        """Enrich a batch. ``sources`` gives (topic, partition, offset) per value for DLQ records.

        A value is one event or an array of events; each event is validated on its own, so
        one bad element is dead-lettered (with its index) and its siblings go on."""
        out = EnrichResult()
        now = time.time_ns()
        grouped: dict[bytes, list[bytes]] = {}
        for i, value in enumerate(values):
            src = _Source(*sources[i]) if sources is not None else _Source()
            if value is not None and is_batch(value):
                # the common case: a sensor's event batch, decoded and validated in one pass
                try:
                    batch = decode_events(value, max_bytes=self.max_record_bytes)
                except RecordError:
                    pass  # the element-wise path below dead-letters each bad element with its reason
                else:
                    self.counters["in"] += len(batch)
                    self._accept(out, grouped, batch)
                    continue
            try:
                if value is None:
                    raise RecordError("empty record (null value)")
                payloads = split_batch(value, max_bytes=self.max_record_bytes)
            except RecordError as exc:
                self.counters["in"] += 1
                self._dead(out, bytes(value or b""), str(exc), now, src)
                continue
            many = len(payloads) > 1 or payloads[0] is not value
            for j, payload in enumerate(payloads):
                self.counters["in"] += 1
                try:
                    event = decode_event(payload, max_bytes=self.max_record_bytes)
                except RecordError as exc:
                    reason = f"element {j} of the batch: {exc}" if many else str(exc)
                    self._dead(out, payload, reason, now, src)
                    continue
                self._accept(out, grouped, [event])
        out.events.extend(workload_batches(grouped))
        return out

    def _accept(self, out: EnrichResult, grouped: dict[bytes, list[bytes]], events: list[Event]) -> None:
        for event in events:
            self.enrich_one(event)
            out.decoded.append(event)
            grouped.setdefault(event.workload.key().encode(), []).append(encode(event))
        self.counters["out"] += len(events)

    def _dead(self, out: EnrichResult, payload: bytes, reason: str, now: int, src: _Source) -> None:
        letter = dead_letter(
            payload,
            stage="enrich",
            reason=reason,
            time_ns=now,
            topic=src.topic,
            partition=src.partition,
            offset=src.offset,
        )
        out.dead.append((b"enrich", encode(letter)))
        self.counters["dead"] += 1


def register(cadr_app: CadrApp) -> None:
    """Add the enrich agent: raw → events (+ dlq), batched."""
    settings = cadr_app.settings
    enricher = Enricher(cluster=settings.cluster, max_record_bytes=settings.kafka.max_record_bytes)
    cadr_app.stages["enrich"] = enricher
    cadr_app.health.metrics["enrich"] = enricher.counters
    events_topic = cadr_app.topic("events")
    dlq_topic = cadr_app.topic("dlq")
    batch = settings.worker.batch_size
    within = settings.worker.batch_window_s

    health = cadr_app.health

    @cadr_app.agent(cadr_app.topic("raw"), name="cadr.enrich")
    async def enrich(stream):
        async for batch_events in stream.take_events(batch, within=within):
            values = [ev.message.value for ev in batch_events]
            sources = [(ev.message.topic, ev.message.partition, ev.message.offset) for ev in batch_events]
            result = enricher.process(values, sources)
            # the producer's futures are awaited together: the batch is acked (and its
            # offsets committed) only after every output record was accepted by the broker
            futures = [await events_topic.send(key=key, value=value) for key, value in result.events]
            futures += [await dlq_topic.send(key=key, value=value) for key, value in result.dead]
            for fut in futures:
                await fut
            health.progress("cadr.enrich", len(values))
