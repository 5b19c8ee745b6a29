"""The cadr Kafka topics (DESIGN.md "Contracts") and an idempotent way to create them.

Logical names are ``raw``, ``events``, ``alerts``, ``incidents``, ``profiles`` and ``dlq``; the full name is
the configurable prefix (default ``cadr.``) followed by the logical name::

    names = topic_names("cadr.")
    names.incidents          # "cadr.incidents"
    names["raw"]             # "cadr.raw"
    TOPIC_NAMES["alerts"]    # "cadr.alerts" (the default prefix)

Every topic uses ``message.timestamp.type=LogAppendTime``: sensors and ``cadr replay`` may publish events
whose own time is years old (the recorded corpus is from 2018-2020; the publisher stamps records with the
event time), and with CreateTime the broker would delete such segments at the next retention check and compact
them with no lag. Event time travels in the payload (``time``).

Producers that write the large topics must raise their own limit too (aiokafka's ``max_request_size``
defaults to 1 MiB): see :data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

__all__ = [
    "COMPACTED",
    "DEFAULT_PREFIX",
    "DEFAULT_RETENTION_MS",
    "LOGICAL_TOPICS",
    "MAX_MESSAGE_BYTES",
    "TOPIC_NAMES",
    "TopicNames",
    "TopicSpec",
    "ensure_topics",
    "topic_names",
    "topic_specs",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "cadr."
LOGICAL_TOPICS: tuple[str, ...] = ("raw", "events", "alerts", "incidents", "profiles", "dlq")

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_MIB = 1024 * 1024

#: Retention of the delete-policy topics. ``incidents`` and ``profiles`` are compacted and keep the latest
#: value per key forever, so they have no entry here.
DEFAULT_RETENTION_MS: Mapping[str, int] = {
    "raw": 7 * _DAY_MS,
    "events": 7 * _DAY_MS,
    "alerts": 30 * _DAY_MS,
    "dlq": 30 * _DAY_MS,
}

#: Largest record batch each topic accepts (topic ``max.message.bytes``). Incidents carry the whole story
#: (timeline, edges, alerts) and profiles a whole baseline snapshot. ``raw`` is deliberately above the
#: enrich stage's own record limit (``kafka.max_record_bytes``, 1 MiB): an oversized record must reach enrich
#: and be dead-lettered with a reason, not be refused by the broker where nobody sees it. The DLQ holds a
#: rejected raw record base64-encoded (4/3 of its size) plus the reason, so it is twice ``raw``.
MAX_MESSAGE_BYTES: Mapping[str, int] = {
    "raw": 8 * _MIB,
    "events": 2 * _MIB,
    "alerts": 2 * _MIB,
    "incidents": 8 * _MIB,
    "profiles": 8 * _MIB,
    "dlq": 16 * _MIB,
}

#: Logical topics with ``cleanup.policy=compact``.
COMPACTED: frozenset[str] = frozenset({"incidents", "profiles"})

# Compacted topics: the active segment is never compacted, so roll segments often enough for compaction to
# run; min.compaction.lag.ms keeps every revision of the last day readable (`cadr incidents tail` from a
# recent offset, the store agent catching up) before older revisions of the same key are cleaned.
_COMPACT_CONFIGS: Mapping[str, Mapping[str, str]] = {
    "incidents": {
        "min.compaction.lag.ms": str(_DAY_MS),
        "segment.ms": str(6 * _HOUR_MS),
        "delete.retention.ms": str(_DAY_MS),
    },
    "profiles": {
        "min.compaction.lag.ms": str(_HOUR_MS),
        "segment.ms": str(6 * _HOUR_MS),
        "delete.retention.ms": str(_DAY_MS),
    },
}


@dataclass(frozen=True, slots=True)
class TopicNames(Mapping[str, str]):
    """Full topic names for one prefix; also a read-only mapping logical name -> full name."""

    prefix: str
    raw: str
    events: str
    alerts: str
    incidents: str
    profiles: str
    dlq: str

    def __getitem__(self, logical: str) -> str:
        if logical not in LOGICAL_TOPICS:
            raise KeyError(logical)
        value: str = getattr(self, logical)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(LOGICAL_TOPICS)

    def __len__(self) -> int:
        return len(LOGICAL_TOPICS)


def topic_names(prefix: str = DEFAULT_PREFIX) -> TopicNames:
    """Return the full names of the cadr topics under ``prefix`` (e.g. ``"cadr."`` -> ``"cadr.raw"``...)."""
    return TopicNames(prefix, *(f"{prefix}{logical}" for logical in LOGICAL_TOPICS))


#: The topic names under the default prefix ``cadr.``.
TOPIC_NAMES: TopicNames = topic_names(DEFAULT_PREFIX)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What :func:`ensure_topics` creates for one topic."""

    logical: str
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


def topic_specs(
    prefix: str = DEFAULT_PREFIX,
    partitions: int = 4,
    retention_ms: Mapping[str, int] | None = None,
    *,
    replication_factor: int = 1,
) -> list[TopicSpec]:
    """Describe the six cadr topics (names, partition counts, topic configs) without touching Kafka.

    ``retention_ms`` overrides :data:`DEFAULT_RETENTION_MS` per logical name; only the delete-policy topics
    (raw, events, alerts, dlq) have a retention, so naming a compacted or unknown topic is a ``ValueError``.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    overrides = dict(retention_ms or {})
    unknown = set(overrides) - set(DEFAULT_RETENTION_MS)
    if unknown:
        raise ValueError(
            f"retention_ms names {sorted(unknown)}; only {sorted(DEFAULT_RETENTION_MS)} have a retention "
            f"({sorted(COMPACTED)} are compacted)"
        )
    retention = {**DEFAULT_RETENTION_MS, **overrides}
    names = topic_names(prefix)
    specs = []
    for logical in LOGICAL_TOPICS:
        configs: dict[str, str] = {
            "max.message.bytes": str(MAX_MESSAGE_BYTES[logical]),
            "message.timestamp.type": "LogAppendTime",
        }
        if logical in COMPACTED:
            configs["cleanup.policy"] = "compact"
            configs.update(_COMPACT_CONFIGS[logical])
        else:
            configs["cleanup.policy"] = "delete"
            configs["retention.ms"] = str(retention[logical])
        specs.append(TopicSpec(logical, names[logical], partitions, replication_factor, configs))
    return specs


async def ensure_topics(
    bootstrap: str,
    prefix: str = DEFAULT_PREFIX,
    partitions: int = 4,
    retention_ms: Mapping[str, int] | None = None,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create the cadr topics under ``prefix`` when missing, and wait until every partition has a leader.

    Idempotent: topics that already exist are left as they are (their configs are not altered). Waiting for
    leaders matters to Faust: a consumer group formed before its source topic is visible gets no partitions of
    it until the next metadata refresh (minutes).

    Args:
        bootstrap: ``host:port[,host:port...]`` of the Kafka cluster.
        prefix: topic name prefix (DESIGN.md default ``cadr.``).
        partitions: partitions of every topic.
        retention_ms: per-logical-name overrides of :data:`DEFAULT_RETENTION_MS`.
        replication_factor: replicas per partition (1 for the local single broker).
        timeout_s: bound on the whole operation.

    Raises:
        aiokafka.errors.KafkaError: a topic could not be created (any error other than "already exists"), or
            the topics had no leaders within ``timeout_s``.
    """
    specs = topic_specs(prefix, partitions, retention_ms, replication_factor=replication_factor)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        await asyncio.wait_for(_create_and_wait(admin, specs, timeout_s), timeout_s)
    except TimeoutError as exc:
        raise KafkaError(
            f"cadr topics under {prefix!r} not ready within {timeout_s:.0f}s on {bootstrap}"
        ) from exc
    finally:
        await admin.close()


async def _create_and_wait(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    new_topics = [
        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs)) for s in specs
    ]
    try:
        response = await admin.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
    except TopicAlreadyExistsError:
        response = None  # some client versions raise instead of reporting per-topic codes
    for topic_error in getattr(response, "topic_errors", ()):
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else None
        if code == 0:
            log.info("created topic %s", name)
        elif code == TopicAlreadyExistsError.errno:
            log.debug("topic %s already exists", name)
        else:
            raise for_code(code)(f"cannot create topic {name}: {message}")
    await _wait_for_leaders(admin, [s.name for s in specs])


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    delay = 0.05
    started = time.monotonic()
    while True:
        topics = await admin.describe_topics(names)
        pending = [
            t["topic"]
            for t in topics
            if t["error_code"] != 0 or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if not pending and len(topics) >= len(names):
            return
        log.debug("waiting for leaders of %s (%.1fs)", pending, time.monotonic() - started)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
