"""The cadr Kafka topics: their names and what each is created with (docs/architecture.md "Topics").

This module describes topics; it never talks to Kafka. ``cadr.topics.ensure_topics`` creates what it
describes, for every caller.

Logical names of the pipeline are ``raw``, ``events``, ``alerts``, ``incidents``, ``profiles`` and ``dlq``;
the full name is the configurable prefix (default ``cadr.``) followed by the logical name::

    names = topic_names("cadr.")
    names.incidents          # "cadr.incidents"
    names["raw"]             # "cadr.raw"
    TOPIC_NAMES["alerts"]    # "cadr.alerts" (the default prefix)

Two more kinds of topic sit beside them: ``<prefix>profile-edits`` (:data:`EDITS`, user edits of baselines,
co-partitioned with ``events``) and one dead-letter topic per forward destination,
``<prefix>forward.dlq.<destination>`` (:func:`forward_dead_letter_topic`).

Every pipeline topic uses ``message.timestamp.type=LogAppendTime``: sensors and ``cadr replay`` may publish
events whose own time is years old (the recorded corpus is from 2018-2020; the publisher stamps records with
the event time), and with CreateTime the broker would delete such segments at the next retention check and
compact them with no lag. Event time travels in the payload (``time``).

Producers that write the large topics must raise their own limit too (aiokafka's ``max_request_size``
defaults to 1 MiB): see :data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "COMPACTED",
    "DEFAULT_PREFIX",
    "DEFAULT_RETENTION_MS",
    "EDITS",
    "EDITS_RETENTION_MS",
    "LOGICAL_TOPICS",
    "MAX_MESSAGE_BYTES",
    "TOPIC_NAMES",
    "TopicNames",
    "TopicSpec",
    "dead_letter_specs",
    "edits_spec",
    "forward_dead_letter_topic",
    "topic_names",
    "topic_specs",
]

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
    """What ``cadr.topics.ensure_topics`` creates for one topic."""

    logical: str
    name: str
    partitions: int
    #: replicas per partition; ``None``: as many as the cluster has brokers, up to three
    replication_factor: int | None
    configs: Mapping[str, str] = field(default_factory=dict)
    #: full name of a topic this one must be co-partitioned with: when that topic exists, this one is
    #: created with its partition count, and an existing one with another count is refused
    copartition_with: str = ""


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


#: logical name of the topic of user edits to baselines (``<prefix>profile-edits``)
EDITS = "profile-edits"
#: edits are applied within seconds; a month covers a worker that was down
EDITS_RETENTION_MS = 30 * _DAY_MS


def edits_spec(prefix: str = DEFAULT_PREFIX, partitions: int = 4) -> TopicSpec:
    """``<prefix>profile-edits``: co-partitioned with ``<prefix>events``, so that an edit keyed by workload
    reaches the worker that owns the workload's events and profiles; ``partitions`` applies only when the
    events topic does not exist yet.

    It has its own topic rather than riding on ``profiles``: that topic is compacted by profile key (an edit
    could be compacted away before it is applied) and is the detect stage's output (reading it back would
    loop)."""
    return TopicSpec(
        EDITS,
        f"{prefix}{EDITS}",
        partitions,
        None,
        {"cleanup.policy": "delete", "retention.ms": str(EDITS_RETENTION_MS)},
        copartition_with=f"{prefix}events",
    )


def forward_dead_letter_topic(prefix: str, destination: str) -> str:
    """The default dead-letter topic of forward destination ``destination``: ``<prefix>forward.dlq.<name>``."""
    return f"{prefix}forward.dlq.{destination}"


def dead_letter_specs(
    names: Iterable[str], *, partitions: int = 1, replication_factor: int = 1
) -> list[TopicSpec]:
    """The forward dead-letter topics ``names``: a refused record is held there with its reply, so they take
    records as large as ``dlq`` does; retention and cleanup are the cluster's defaults."""
    configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES["dlq"])}
    return [TopicSpec("forward.dlq", name, partitions, replication_factor, configs) for name in names]
