"""Shared pytest fixtures. Keep each section small; add new sections below the existing ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cadr.kafka_local import LocalKafka

# ------------------------------------------------------------------------------------------------------------
# Kafka: one real Apache Kafka broker (KRaft, loopback) per test session.
#
# Started on first use on a free port in a session tmp dir; nothing is skipped: when Java, Maven or the broker
# fail, the tests that use it error with the broker's log tail (see cadr.kafka_local.KafkaStartError).
# Tests share the broker, so each one names its topics, consumer groups and Faust app ids with `topic_prefix`.
# A test that stops, kills or pauses Kafka starts its own LocalKafka instead (see tests/cadr/test_kafka_local.py).
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """The session's running LocalKafka (``.bootstrap`` is ``"127.0.0.1:PORT"``)."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to this test, e.g. ``"t1a2b3c4d."``, for topics, group ids and Faust app ids."""
    return f"t{uuid.uuid4().hex[:8]}."
