"""The eBPF sensor's run loop: drain the ring buffer, decode, attribute, hand to a sink.

The loop drains whatever the kernel wrote every ``poll_interval_s`` (backing off on a
quiet node, and at once when the kernel forces a wake-up because the backlog passed its
threshold), decodes it in place, and gives the sink one batch. A JSON sink gets the batch
from the native consumer (:mod:`.native`, C: one buffer of JSON lines per poll) when
``build/libcadrring.so`` is built, else from the Python one (:mod:`.ringbuf` +
:mod:`.decode`); both give the same bytes. Counters: kernel drops per CPU (ring buffer full), user
drops per CPU (records the decoder or the sink could not deliver), spool drops (the
publisher's). They are published as ``sensor_health`` events every
``health_interval_s`` and served as Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.codec import decode_event
from schemas.records import Event, EventKind, SensorHealth, Workload
from sensors.containers import WorkloadResolver
from sensors.ebpf import layout
from sensors.ebpf.batch import JsonBatch
from sensors.ebpf.cgroups import Attribution, CgroupIndex
from sensors.ebpf.decode import BootClock, Decoder
from sensors.ebpf.hold import AttributionHold
from sensors.ebpf.loader import Probe, ProbeConfig
from sensors.ebpf.native import NativeConsumer, load_library
from sensors.ebpf.peers import PeerNames
from sensors.publisher import Publisher, encode_event

__all__ = [
    "CollectSink",
    "EbpfSensor",
    "PublisherSink",
    "SensorOptions",
    "Sink",
    "attribute",
    "encode_event",
]

log = logging.getLogger(__name__)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Sink(Protocol):
    """Where decoded events go (Kafka publisher, JSON lines, a test list).

    A sink with ``wants_json = True`` gets each poll's events already encoded, as one
    :class:`~sensors.ebpf.batch.JsonBatch` (JSON lines, and per event its key, timestamp
    and cpu) through :meth:`send_batch`; :meth:`send` gets Event objects (health events,
    and everything for sinks that want objects).
    """

    wants_json: bool

    async def send(self, batch: list[tuple[Event, bytes]]) -> None: ...

    async def send_batch(self, batch: JsonBatch) -> None: ...

    def counters(self) -> dict[str, int]: ...

    async def aclose(self) -> None: ...


def attribute(batch: Any, hold: AttributionHold | None, peers: PeerNames | None) -> Any:
    """A drained batch as the sink gets it: events of containers whose pod is not known yet wait in
    ``hold`` (held ones whose pod became known, or whose time is up, join the batch ahead of it), and
    connections get the workload at their other end (``peers``)."""
    if hold is not None and hold.active():
        batch = JsonBatch.from_items(hold.process(batch.items() if batch else []))
    if peers is not None and isinstance(batch, JsonBatch) and peers.wanted(batch):
        batch = JsonBatch.from_items(peers.process(batch.items()))
    return batch


class PublisherSink:
    """Events to Kafka through a :class:`~sensors.publisher.Publisher` (keyed by workload)."""

    wants_json = True

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def send(self, batch: list[tuple[Event, bytes]]) -> None:
        await self.publisher.publish_many((key, encode_event(ev), ev.time // 1_000_000) for ev, key in batch)

    async def send_batch(self, batch: JsonBatch) -> None:
        await self.publisher.publish_many([(item[1], item[0], item[2]) for item in batch.items()])

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.publisher.counters().items() if isinstance(v, int)}

    async def aclose(self) -> None:
        await self.publisher.close()


class CollectSink:
    """Keeps events in memory (tests), optionally filtered.

    By default it takes the JSON the sensor ships (and decodes it with the schema, so tests
    check the bytes a real sink gets); ``json=False`` takes the decoder's Event objects."""

    def __init__(self, keep: Callable[[Event], bool] | None = None, *, json: bool = True) -> None:
        self.wants_json = json
        self.keep = keep
        self.events: list[Event] = []
        self.keys: list[bytes] = []
        self.seen = 0

    async def send(self, batch: list[tuple[Event, bytes]]) -> None:
        self.seen += len(batch)
        for ev, key in batch:
            if self.keep is None or self.keep(ev):
                self.events.append(ev)
                self.keys.append(key)

    async def send_batch(self, batch: JsonBatch) -> None:
        await self.send([(decode_event(value), key) for value, key, _, _ in batch.items()])

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen, "kept": len(self.events)}

    async def aclose(self) -> None:
        return None


@dataclass
class SensorOptions:
    node: str
    cluster: str = ""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    #: how often the ring buffer is drained when the kernel does not force a wake-up
    poll_interval_s: float = 0.01
    #: a poll that drained less than this is "light": after 10 in a row the interval
    #: grows, up to max_backoff x poll_interval_s (latency bound on a quiet node)
    light_batch_bytes: int = 64 << 10
    max_backoff: int = 10
    health_interval_s: float = 10.0
    #: most bytes decoded before yielding to the event loop
    max_batch_bytes: int = 2 << 20
    #: read the ring with the C consumer (build/libcadrring.so) when it is built and the
    #: sink takes JSON; else (or without it) the pure Python consumer
    native: bool = True
    #: how long events of a Kubernetes container whose pod the resolver does not know yet wait for
    #: it (sensors.ebpf.hold); 0: never wait
    attribution_hold_s: float = 10.0


class EbpfSensor:
    """One node's eBPF sensor. ``start()`` loads the programs; ``run()`` streams events."""

    def __init__(self, options: SensorOptions, sink: Sink, resolver: WorkloadResolver | None = None) -> None:
        self.options = options
        self.sink = sink
        self.resolver = resolver
        self.probe: Probe | None = None
        self.clock = BootClock()
        self.index: CgroupIndex | None = None
        self.attribution: Attribution | None = None
        self.decoder: Decoder | None = None
        self.native: NativeConsumer | None = None
        self.hold: AttributionHold | None = None
        self.peers: PeerNames | None = None
        self._more = False
        self.user_drops_per_cpu: dict[int, int] = {}
        self.started_ns = 0
        self.batches = 0
        self._health_seq = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None
        self.ready = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Load and attach the BPF programs (raises SensorUnavailableError with what is missing)."""
        probe = Probe(self.options.probe)
        self.probe = probe
        self.index = CgroupIndex(probe.cgroup2, probe.v1_mount or None, probe.v1_hierarchy_id)
        self.index.scan()
        self.attribution = Attribution(self.index, self.resolver, cluster=self.options.cluster)
        attribution = self.attribution
        self.decoder = Decoder(
            self.options.node,
            self.clock,
            attribution.lookup,
            generation=attribution.current_generation,
            on_cgroup=self._on_cgroup,
        )
        if self.resolver is not None and self.options.attribution_hold_s > 0 and self.sink.wants_json:
            self.hold = AttributionHold(attribution, hold_s=self.options.attribution_hold_s)
        peer_of = getattr(self.resolver, "peer_of", None)
        if peer_of is not None and self.sink.wants_json:
            self.peers = PeerNames(peer_of)
        lib = load_library() if self.options.native and self.sink.wants_json else None
        if lib is not None:
            self.native = NativeConsumer(
                lib,
                self.decoder,
                probe.ring.data,
                probe.ring.fd,
                probe.ring.size,
                generation=attribution.current_generation,
            )
        self.started_ns = time.time_ns()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._waiter is not None:
            _resolve(self._waiter)

    def close(self) -> None:
        if self.native is not None:
            self.native.close()
            self.native = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def _on_cgroup(self, rtype: int, hierarchy: int, cgroup_id: int, path: str) -> None:
        assert self.index is not None and self.attribution is not None
        if rtype == layout.T_CGROUP_MKDIR:
            self.index.on_mkdir(hierarchy, cgroup_id, path)
        else:
            self.index.on_rmdir(hierarchy, cgroup_id)
        self.attribution.forget(cgroup_id)

    # -- the loop -----------------------------------------------------------------------

    def drain(self, max_bytes: int | None = None) -> tuple[Any, int]:
        """Decode what the kernel wrote (up to ``max_bytes``): (batch, bytes consumed).

        The batch is a :class:`JsonBatch` for a sink that ``wants_json``, else a list of
        (Event, key) pairs."""
        assert self.probe is not None and self.decoder is not None
        limit = max_bytes or self.options.max_batch_bytes
        if self.native is not None:
            batch, nbytes, self._more = self.native.drain(limit)
            return batch, nbytes
        decode = self.decoder.decode_json if self.sink.wants_json else self.decoder.decode
        items, _, nbytes = self.probe.ring.drain(decode, limit)
        self._more = nbytes >= limit
        return (JsonBatch.from_items(items) if self.sink.wants_json else items), nbytes

    async def run(self, duration_s: float | None = None) -> None:
        """Stream events to the sink until :meth:`stop` (or ``duration_s``)."""
        if self.probe is None:
            self.start()
        assert self.probe is not None
        loop = asyncio.get_running_loop()
        ring = self.probe.ring

        def on_wakeup() -> None:
            ring.clear_wakeup()
            self._wake.set()
            if self._waiter is not None:
                _resolve(self._waiter)

        loop.add_reader(ring.wait_fd(), on_wakeup)
        deadline = None if duration_s is None else loop.time() + duration_s
        next_health = loop.time() + self.options.health_interval_s
        idle = 0
        try:
            await self.sink.send([(self.health_event("started"), self._host_key())])
            self.ready.set()
            while not self._stop.is_set():
                batch, nbytes = self.drain()
                batch = self._attribute(batch)
                if batch:
                    await self._deliver(batch)
                now = loop.time()
                if now >= next_health:
                    self.clock.calibrate()
                    await self.sink.send([(self.health_event("running"), self._host_key())])
                    next_health = now + self.options.health_interval_s
                if deadline is not None and now >= deadline:
                    break
                if not self._more:
                    # A poll costs ~0.1-0.2 ms whatever it finds, so polls that find
                    # little (a quiet node) back off step by step to max_backoff x the
                    # interval; the kernel's forced wake-up at wakeup_bytes cuts a sleep
                    # short when a burst comes. Busy: poll at the base interval.
                    idle = idle + 1 if nbytes < self.options.light_batch_bytes else 0
                    factor = min(self.options.max_backoff, 1 + idle // 10)
                    await self._sleep(loop, self.options.poll_interval_s * factor)
                else:
                    await asyncio.sleep(0)
            # what the kernel wrote before we stopped
            while True:
                batch, nbytes = self.drain()
                batch = self._attribute(batch)
                if batch:
                    await self._deliver(batch)
                if nbytes == 0:
                    break
            if self.hold is not None and self.hold.held:
                await self._deliver(JsonBatch.from_items(self.hold.flush()))
            await self.sink.send([(self.health_event("stopped"), self._host_key())])
        finally:
            loop.remove_reader(ring.wait_fd())

    def _attribute(self, batch: Any) -> Any:
        return attribute(batch, self.hold, self.peers)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Sleep until the timeout or a wake-up (cheaper than wait_for: no task per call)."""
        if self._wake.is_set():
            self._wake.clear()
            return
        fut = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(seconds, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None
            self._wake.clear()

    async def _deliver(self, batch: JsonBatch | list[tuple[Event, bytes]]) -> None:
        self.batches += 1
        try:
            if isinstance(batch, JsonBatch):
                await self.sink.send_batch(batch)
            else:
                await self.sink.send(batch)
        except Exception:
            log.exception("sink failed; %d events dropped", len(batch))
            cpus = (
                batch.cpus()
                if isinstance(batch, JsonBatch)
                else [int(ev.event_id.split(":")[-3], 16) for ev, _ in batch]
            )
            for cpu in cpus:
                self.user_drops_per_cpu[cpu] = self.user_drops_per_cpu.get(cpu, 0) + 1

    # -- health and metrics -------------------------------------------------------------

    def _host_key(self) -> bytes:
        return self.attribution.host_key if self.attribution else b"/host"

    def counters(self) -> dict[str, Any]:
        """Every counter of the sensor, kernel and user side."""
        assert self.probe is not None and self.decoder is not None
        per_cpu = self.probe.stats()
        ncpu = len(per_cpu)
        user = [
            self.user_drops_per_cpu.get(i, 0) + self.decoder.stats.per_cpu_errors.get(i, 0)
            for i in range(ncpu)
        ]
        totals = {k: sum(c[k] for c in per_cpu) for k in layout.STATS_FIELDS}
        sink = self.sink.counters()
        return {
            "kernel": totals,
            "kernel_drops_per_cpu": [c["drops"] for c in per_cpu],
            "user_drops_per_cpu": user,
            "decoded_records": self.decoder.stats.records,
            "decoded_events": self.decoder.stats.events,
            "decode_errors": self.decoder.stats.errors,
            "cgroup_records": self.decoder.stats.cgroup_records,
            "cgroup_scans": self.index.scans if self.index else 0,
            "ring_pending_bytes": self.probe.ring.pending(),
            "batches": self.batches,
            "consumer": "native" if self.native is not None else "python",
            "attribution": self.attribution_counters(),
            "sink": sink,
        }

    def attribution_counters(self) -> dict[str, int]:
        """Events that waited for their pod: held now, released with their pod, released without."""
        hold = self.hold
        if hold is None:
            return {"held": 0, "held_total": 0, "attributed_late": 0, "unattributed": 0, "overflow": 0}
        return {"held": hold.held, **hold.counters}

    def health_event(self, state: str) -> Event:
        c = self.counters()
        kernel_drops = c["kernel_drops_per_cpu"]
        user_drops = c["user_drops_per_cpu"]
        sink = c["sink"]
        now = time.time_ns()
        self._health_seq += 1
        return Event(
            event_id=f"{self.options.node}:health:{os.getpid():x}:{self._health_seq:x}:{now:x}",
            time=now,
            node=self.options.node,
            source="ebpf",
            kind=EventKind.SENSOR_HEALTH,
            workload=self.attribution.host if self.attribution else Workload(cluster=self.options.cluster),
            health=SensorHealth(
                sensor="ebpf",
                events=c["kernel"]["events"],
                kernel_drops=sum(kernel_drops),
                user_drops=sum(user_drops),
                spool_drops=int(sink.get("spool_dropped", 0)),
                per_cpu_drops=[k + u for k, u in zip(kernel_drops, user_drops, strict=True)],
                detail={
                    "state": state,
                    "programs": self.probe.programs if self.probe else [],
                    "kernel_drops_per_cpu": kernel_drops,
                    "user_drops_per_cpu": user_drops,
                    "decoded_events": c["decoded_events"],
                    "decode_errors": c["decode_errors"],
                    "bytes": c["kernel"]["bytes"],
                    "kernel_drops_not_full": c["kernel"]["drops_not_full"],
                    "path_truncated": c["kernel"]["path_trunc"],
                    "opens_seen": c["kernel"]["open_seen"],
                    "opens_suppressed": c["kernel"]["open_suppressed"],
                    "ring_pending_bytes": c["ring_pending_bytes"],
                    "consumer": c["consumer"],
                    "attribution": c["attribution"],
                    "sink": sink,
                    "started": self.started_ns,
                },
            ),
        )
