"""Profile edits without a restart: the ``profile-edits`` topic and the agent applying it.

``cadr profiles allow/import/relearn`` publish a :class:`~schemas.records.ProfileEdit` keyed by
the workload key — the key the workload's events carry on ``cadr.events`` — to a topic with the
same partition count. Faust co-partitions topics of equal partition count read by the same
workers, so an edit reaches the worker that owns the workload's events and its profiles. The
topic is described by :func:`schemas.topics.edits_spec` and created by the CLI.

The agent applies an edit through the detect stage's own :class:`~streams.baseline.Baselines`
(``cadr_app.stages["detect"].baselines``), not through a second view of the Faust table: the
detector keeps decoded profiles in its table wrapper's cache, and a write behind its back would
be overwritten by its next learning write. Agents share one event loop and the detector handles
an event without awaiting, so an edit lands between two events, never inside one. The changed
profiles go to ``cadr.profiles`` at once (snapshot, ClickHouse) and the next event of the
workload is judged by the edited profile.

Edits have their own topic rather than riding on ``cadr.profiles``: that topic is compacted by
profile key (an edit could be compacted away before it is applied) and is the detect stage's
output (reading it back would loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka.partitioner import murmur2

from schemas.codec import decode, decode_profile, encode
from schemas.errors import CadrError, RecordError
from schemas.records import Profile, ProfileEdit
from schemas.settings import Settings
from schemas.topics import EDITS
from streams.kafka_access import client_options

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = [
    "ProfileChannelError",
    "decode_edit",
    "profile_table",
    "publish_edits",
    "read_profiles",
    "register",
    "workload_partition",
]

log = logging.getLogger(__name__)


class ProfileChannelError(CadrError):
    """Profiles or edits could not be read from or written to Kafka."""


def decode_edit(data: bytes | str | dict[str, Any]) -> ProfileEdit:
    """Decode and validate one profile edit."""
    return decode(data, ProfileEdit, max_bytes=8 << 20)


def workload_partition(workload_key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed by ``workload_key``:
    where the workload's events are, and so where its profiles' changelog must be."""
    return (murmur2(workload_key.encode()) & 0x7FFFFFFF) % partitions


# --- Faust side ----------------------------------------------------------------------------


def profile_table(cadr_app: Any, name: str = "cadr-profiles") -> Any:
    """A :class:`~streams.tables.RecordTable` of profiles whose changelog partition is the
    partition of the workload's events.

    Profile keys are ``<workload key>|<container>``; Kafka's partitioner would put them on a
    different partition than the events (keyed ``<workload key>``), so after a rebalance or a
    restart with several workers the owner of the events would not restore the profiles. This
    table routes each key to the workload's event partition, so it also needs no current event
    (edits and timers may write)."""
    import faust

    from streams.tables import RecordTable

    partitions = cadr_app.settings.kafka.partitions

    class WorkloadPartitionedTable(faust.Table):
        def partition_for_key(self, key: Any) -> int:
            raw = key if isinstance(key, bytes) else str(key).encode()
            return workload_partition(raw.split(b"|", 1)[0].decode(), partitions)

    app = cadr_app.app
    table = app.tables.add(
        WorkloadPartitionedTable(
            app,
            name=name,
            beacon=app.tables.beacon,
            partitions=partitions,
            # bytes types give the "raw" codec to the changelog too (a schema= would not, and
            # recovery would then read the raw keys as JSON)
            key_type=bytes,
            value_type=bytes,
        )
    )
    return RecordTable(table, decode_profile)


def register(cadr_app: CadrApp) -> None:
    """Add the agent applying profile edits (register after the detect stage)."""

    detector = cadr_app.stages.get("detect")
    if detector is None:
        raise RuntimeError("the profiles stage applies edits through the detect stage: register detect first")
    baselines = detector.baselines
    profiles_topic = cadr_app.topic("profiles")
    counters = {"edits": 0, "rejected": 0, "profiles": 0}
    cadr_app.stages["profiles"] = counters

    health = cadr_app.health

    @cadr_app.agent(cadr_app.topic(EDITS), name="cadr.profile-edits")
    async def profile_edits(stream):
        async for value in stream:
            try:
                edit = decode_edit(value)
            except RecordError:
                counters["rejected"] += 1
                log.exception("undecodable profile edit")
                continue
            changed = baselines.apply_edit(edit)
            counters["edits"] += 1
            counters["profiles"] += len(changed)
            log.info(
                "profile edit %s (%s by %s) applied to %s",
                edit.edit_id,
                edit.op.value,
                edit.user or "?",
                ", ".join(changed) or "nothing",
            )
            for key, profile in changed.items():
                await profiles_topic.send(key=key.encode(), value=encode(profile))
            health.progress("cadr.profile-edits")


# --- client side (the CLI) -----------------------------------------------------------------


async def publish_edits(settings: Settings, edits: Iterable[ProfileEdit], timeout_s: float = 30.0) -> int:
    """Publish edits keyed by workload key (waits for every acknowledgement). The topic must exist
    (``cadr.topics.ensure_topics`` with :func:`schemas.topics.edits_spec`): left to the broker's
    auto-creation it would not be co-partitioned with the events."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        **client_options(settings.kafka),
        acks="all",
        max_request_size=8 << 20,
        request_timeout_ms=int(timeout_s * 1000),
    )
    n = 0
    try:
        await producer.start()
        for edit in edits:
            await producer.send_and_wait(
                settings.topic(EDITS), key=edit.workload_key.encode(), value=encode(edit)
            )
            n += 1
    except KafkaError as exc:
        raise ProfileChannelError(f"cannot publish to {settings.topic(EDITS)}: {exc}") from exc
    finally:
        await producer.stop()
    return n


async def read_profiles(
    settings: Settings, match: Callable[[Profile], bool] = lambda p: True, timeout_s: float = 60.0
) -> list[Profile]:
    """The newest snapshot of every profile on ``cadr.profiles`` that ``match`` accepts
    (reads the topic from the beginning up to its end when called)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    name = settings.topic("profiles")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        **client_options(settings.kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )
    latest: dict[bytes, Profile] = {}
    deadline = time.monotonic() + timeout_s
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(name) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # a new client knows no topics yet
            partitions = consumer.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise ProfileChannelError(f"reading {name} took over {timeout_s:.0f}s")
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, messages in batch.items():
                for m in messages:
                    if m.value is None:
                        latest.pop(m.key or b"", None)
                        continue
                    try:
                        profile = decode_profile(m.value)
                    except RecordError:
                        log.warning("undecodable profile at %s:%d offset %d", name, tp.partition, m.offset)
                        continue
                    if match(profile):
                        latest[m.key or b""] = profile
                if messages and messages[-1].offset + 1 >= end[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
    except KafkaError as exc:
        raise ProfileChannelError(f"cannot read {name} from {settings.kafka.bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()
    return sorted(latest.values(), key=lambda p: (p.workload_key, p.container))


def run(coro: Any) -> Any:
    """Run a coroutine from synchronous code (the CLI)."""
    return asyncio.run(coro)
