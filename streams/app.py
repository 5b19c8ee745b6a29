"""The Faust application the stages share: its options, its topics, and the stages' objects.

One stage per module (``streams.enrich``, ``streams.detect``, ``streams.correlate``,
``streams.store``, ...). Each module exposes ``register(cadr_app: CadrApp)`` which adds its
agent(s) to the Faust app; the stage logic itself is pure functions tested without Kafka.
:mod:`streams.worker` imports the stages and wires them into an app built here. Topics carry
raw bytes: records are decoded once, in batches, by the stage that reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from schemas.settings import Settings
from streams.health import HealthRegistry
from streams.kafka_access import faust_credentials
from streams.recovery import CadrFaustApp, CadrTableManager

__all__ = ["CadrApp", "build_app"]


@dataclass
class CadrApp:
    """The Faust app plus the settings and topics every stage shares."""

    settings: Settings
    app: faust.App
    topics: dict[str, faust.TopicT] = field(default_factory=dict)
    #: per-stage objects that tests and the CLI may want to reach (metrics, sinks)
    stages: dict[str, Any] = field(default_factory=dict)
    #: every agent's progress and crashes; readiness (see streams.health)
    health: HealthRegistry = field(default_factory=HealthRegistry)

    def agent(self, channel: Any, name: str) -> Callable[[Callable[..., Any]], Any]:
        """``app.agent`` with its crashes reported to :attr:`health` (by :class:`CadrFaustApp`; the body
        reports progress with ``cadr_app.health.progress(name)``)."""
        self.health.register(name)
        return self.app.agent(channel, name=name)

    def timer(self, interval: float, name: str) -> Callable[[Callable[[], Awaitable[None]]], Any]:
        """``app.timer`` whose failures are reported to :attr:`health` and do not stop the timer."""
        self.health.register(name)
        health = self.health

        def wrap(fn: Callable[[], Awaitable[None]]) -> Any:
            async def tick() -> None:
                try:
                    await fn()
                except Exception as exc:
                    logging.getLogger(__name__).exception("timer %s failed", name)
                    health.crashed(name, exc)
                else:
                    health.progress(name)

            tick.__name__ = tick.__qualname__ = name.replace(".", "_").replace("-", "_")
            return self.app.timer(interval=interval)(tick)

        return wrap

    def topic(self, name: str) -> faust.TopicT:
        """The Faust topic for a logical name (raw, events, alerts, incidents, profiles, dlq)."""
        if name not in self.topics:
            # the producer learns its partitions before any agent runs (streams.producer)
            if isinstance(self.app, CadrFaustApp):
                self.app.output_topics.add(self.settings.topic(name))
            self.topics[name] = self.app.topic(
                self.settings.topic(name),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.settings.kafka.partitions,
            )
        return self.topics[name]


def build_app(settings: Settings, **overrides: Any) -> CadrApp:
    """Build the Faust app for ``settings``, with no stage yet (:func:`streams.worker.create_app` adds them).

    The web server binds loopback (Faust's default is every interface) and is off
    unless ``worker.web_enabled``; consumer timeouts are short so a restarted worker
    rejoins its group in seconds rather than a minute.
    """
    if not settings.kafka.bootstrap:
        raise ValueError("settings.kafka.bootstrap must be set before creating the app")
    brokers = [f"kafka://{b.strip()}" for b in settings.kafka.bootstrap.split(",") if b.strip()]
    options: dict[str, Any] = {
        "broker": brokers,
        # TLS / SASL for every client Faust makes (producer, consumers, topic admin)
        "broker_credentials": faust_credentials(settings.kafka),
        "store": "memory://",
        "topic_partitions": settings.kafka.partitions,
        "topic_replication_factor": 1,
        "web_enabled": settings.worker.web_enabled,
        "web_bind": settings.worker.web_host,
        "web_host": settings.worker.web_host,
        "web_port": settings.worker.web_port,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 20.0,
        "broker_commit_every": 10_000,
        "broker_commit_interval": 1.0,
        "producer_compression_type": settings.kafka.compression or None,
        "producer_linger": 0.05,
        "producer_max_batch_size": 1 << 20,
        "stream_buffer_maxsize": 16_384,
        "stream_wait_empty": False,
        "table_cleanup_interval": 30.0,
        "datadir": f"{settings.data_dir}/worker-{settings.worker.app_id}",
        "autodiscover": False,
        # seeks the stream partitions before their records may flow (a restart otherwise can lose one)
        "TableManager": CadrTableManager,
    }
    options.update(overrides)
    # Faust creates its worker folder without parents
    Path(options["datadir"]).parent.mkdir(parents=True, exist_ok=True)
    app = CadrFaustApp(settings.worker.app_id, **options)
    app.output_topics = set()
    cadr_app = CadrApp(settings=settings, app=app)
    app.health = cadr_app.health
    _health_page(cadr_app)
    return cadr_app


def _health_page(cadr_app: CadrApp) -> None:
    """``GET /cadr/health``: the agents' health, 200 when ready, 503 when an agent failed (served only
    when Faust's web server is on, ``worker.web_enabled``)."""
    health = cadr_app.health

    @cadr_app.app.page("/cadr/health/")
    async def page(web: Any, request: Any) -> Any:
        snapshot = health.snapshot()
        return web.json(snapshot, status=200 if snapshot["ready"] else 503)
