"""Creating cadr's Kafka topics: the one function every caller uses.

What a topic is created with (name, partitions, configs) is described in :mod:`schemas.topics`; this module
only brings it about on a cluster::

    await ensure_topics(bootstrap, [*topic_specs(prefix, 4), edits_spec(prefix, 4)])
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from schemas.errors import CadrError
from schemas.topics import TopicSpec

__all__ = ["TopicError", "ensure_topics"]

log = logging.getLogger(__name__)

#: most replicas a topic with ``replication_factor=None`` gets
_MAX_REPLICAS = 3


class TopicError(CadrError):
    """Topics could not be created or did not become ready."""


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    *,
    timeout_s: float = 30.0,
    client_options: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics of ``specs`` that are missing, and wait until every partition has a leader.

    Idempotent: topics that already exist are left as they are (their configs are not altered), except that
    a topic co-partitioned with another (:attr:`TopicSpec.copartition_with`) must have that topic's partition
    count. Waiting for leaders matters to Faust: a consumer group formed before its source topic is visible
    gets no partitions of it until the next metadata refresh (minutes).

    Args:
        bootstrap: ``host:port[,host:port...]`` of the Kafka cluster.
        specs: what to create (:func:`schemas.topics.topic_specs`, :func:`~schemas.topics.edits_spec`,
            :func:`~schemas.topics.dead_letter_specs`).
        timeout_s: bound on the whole operation.
        client_options: TLS/SASL options of the admin client (``streams.kafka_access.client_options``).
        client_options: TLS/SASL options of the admin client (``streams.kafka_access.client_options``).

    Raises:
        TopicError: a topic could not be created (any error other than "already exists"), a co-partitioned
            topic exists with another partition count, or the topics had no leaders within ``timeout_s``.
    """
    if not specs:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **dict(client_options or {})
    )
    try:
        await admin.start()
        await asyncio.wait_for(_create_and_wait(admin, specs, timeout_s), timeout_s)
    except TimeoutError as exc:
        names = ", ".join(s.name for s in specs)
        raise TopicError(f"topics {names} not ready within {timeout_s:.0f}s on {bootstrap}") from exc
    except KafkaError as exc:
        raise TopicError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def _create_and_wait(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], timeout_s: float) -> None:
    # describing a missing topic may have the broker auto-create it (with its default partition count):
    # list the topics first and describe only those that exist
    existing = set(await admin.list_topics())
    partners = {s.copartition_with for s in specs if s.copartition_with}
    present = sorted((partners | {s.name for s in specs}) & existing)
    described = await admin.describe_topics(present) if present else []
    partitions = {
        t["topic"]: len(t["partitions"]) for t in described if not t["error_code"] and t["partitions"]
    }
    replicas = await _replicas(admin, specs, existing)
    new_topics = []
    for s in specs:
        want = partitions.get(s.copartition_with, s.partitions) if s.copartition_with else s.partitions
        if s.name in existing:
            if s.copartition_with and s.name in partitions and partitions[s.name] != want:
                raise TopicError(
                    f"{s.name} has {partitions[s.name]} partitions but {s.copartition_with} has {want}: "
                    "records keyed alike would reach different workers; recreate it with the same partition count"
                )
            continue
        factor = s.replication_factor if s.replication_factor is not None else replicas
        new_topics.append(NewTopic(s.name, want, factor, topic_configs=dict(s.configs)))
    if new_topics:
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
                log.debug("topic %s already exists", name)  # created by someone else since we listed
            else:
                raise for_code(code)(f"cannot create topic {name}: {message}")
    await _wait_for_leaders(admin, [s.name for s in specs])


async def _replicas(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], existing: set[str]) -> int:
    """Replicas for a missing topic that leaves the choice to the cluster: one per broker, up to three."""
    if all(s.replication_factor is not None or s.name in existing for s in specs):
        return 1
    brokers = len((await admin.describe_cluster())["brokers"])
    return min(_MAX_REPLICAS, max(1, brokers))


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
