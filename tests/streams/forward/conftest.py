"""Fixtures of the forwarder tests."""

from __future__ import annotations

import pytest
import trustme

from cadr.kafka_local import LocalKafka
from cadr.topics import ensure_topics
from schemas.topics import topic_specs


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority for the TLS destinations and receivers of one test module."""
    return trustme.CA()


@pytest.fixture
async def topics(kafka_broker: LocalKafka, topic_prefix: str) -> str:
    """The cadr topics (4 partitions) under this test's prefix; returns the prefix."""
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 4))
    return topic_prefix
