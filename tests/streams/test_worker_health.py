"""A stage must not stop every story silently (issue 19 item 3).

Seen live: the correlate agent crash-looped from its first alert (``TypeError: 'NoneType' object is not
iterable`` in aiokafka's ``_partition``, from a table write's eager partitioning), because the producer's
metadata had lost the changelog topic: a forced metadata refresh asks only for the topics the producer has
sent to, and the changelog topic had never been one of them. These tests run the worker's Faust app in
this process against the real broker, force that refresh right before the first alert, and read the
incident topic; and they check that an agent crashing twice in a row shows in the worker's health.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cadr.runtime import ensure_topics_sync
from schemas.codec import encode
from schemas.settings import Settings
from streams.app import CadrApp
from streams.worker import create_app
from tests.pipeline_harness import consume_until, make_settings, publish
from tests.shapes import Node, Stages


def _alert_records(settings: Settings) -> list[bytes]:
    node = Node(cluster=settings.cluster)
    pod = node.pod("shop", "api-1", service_account="api", ip="10.244.1.9")
    stages = Stages(settings)
    stages.feed([node.api(pod.user, "list", "secrets", at=5, namespace="shop", source_ips=[pod.ip])])
    assert stages.alerts
    return [encode(a) for a in stages.alerts]


@contextlib.asynccontextmanager
async def running(settings: Settings, stages: list[str]) -> AsyncIterator[CadrApp]:
    cadr_app = create_app(settings, stages=stages)
    app = cadr_app.app
    await app.start()
    try:
        await _wait(lambda: app.tables.recovery.completed.is_set(), 90, "table recovery")
        yield cadr_app
    finally:
        await app.stop()


async def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.1)


async def _forget_changelogs(cadr_app: CadrApp, settings: Settings) -> None:
    """What the race did: a metadata refresh for the topics the producer has sent to (only)."""
    client = cadr_app.app.producer._ensure_producer().client  # type: ignore[attr-defined]
    client.add_topic(settings.topic("incidents"))
    await client.force_metadata_update()


@pytest.fixture
def settings(kafka_broker: Any, topic_prefix: str, tmp_path: Path) -> Settings:
    s = make_settings(kafka_broker.bootstrap, topic_prefix, tmp_path)
    s.cluster = "prod"
    ensure_topics_sync(s)
    return s


def test_correlate_survives_a_producer_that_forgot_the_changelog_topics(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running(settings, ["correlate"]) as cadr_app:
            await _forget_changelogs(cadr_app, settings)
            await publish(settings, _alert_records(settings), topic="alerts")
            incidents = await consume_until(settings, "incidents", lambda r: len(r) >= 1, timeout=60)
            health = cadr_app.health.snapshot()
            assert health["ready"], health
            assert health["agents"]["cadr.correlate"]["crashes"] == 0, health
            return incidents

    incidents = asyncio.run(scenario())
    assert incidents[0]["actors"] == [{"kind": "service_account", "name": "system:serviceaccount:shop:api"}]


def test_an_agent_crashing_twice_in_a_row_fails_readiness(settings: Settings) -> None:
    async def scenario() -> None:
        async with running(settings, ["correlate"]) as cadr_app:
            assert cadr_app.health.ready()
            correlator = cadr_app.stages["correlate"]

            def broken(alert: Any, now_ns: int) -> Any:
                raise RuntimeError(f"boom on {alert.alert_id}")

            correlator.add = broken
            records = _alert_records(settings)
            await publish(settings, records[:1], topic="alerts")
            await _wait(
                lambda: cadr_app.health.snapshot()["agents"]["cadr.correlate"]["crashes"] >= 1, 60, "1 crash"
            )
            assert cadr_app.health.ready(), "one crash is not yet a failure"
            await publish(settings, [records[0].replace(b'"alert_id":"', b'"alert_id":"x')], topic="alerts")
            await _wait(lambda: not cadr_app.health.ready(), 60, "readiness to fail")
            agent = cadr_app.health.snapshot()["agents"]["cadr.correlate"]
            assert agent["failed"] and agent["consecutive_crashes"] >= 2
            assert "boom on" in agent["last_error"]

    asyncio.run(scenario())
