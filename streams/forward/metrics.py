"""Counters per destination, and a Prometheus text endpoint for them.

The counters answer the questions an operator asks during an outage: how far behind
is each destination (``lag``), is it taking records (``sent``, ``up``), how often does
it fail (``failed``, ``retried``) and what did it refuse (``dead_lettered``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["DestinationMetrics", "ForwardMetrics", "serve_metrics"]

_COUNTERS = {
    "consumed": "records read from the source topic",
    "skipped": "records the destination does not want (min_severity, filter)",
    "sent": "records the destination acknowledged (duplicates included)",
    "duplicates": "records the destination reported it already had",
    "failed": "record send attempts that failed and will be retried",
    "retried": "records sent again after a failure",
    "dead_lettered": "records written to the dead-letter topic",
    "requests": "requests (batches) sent to the destination",
    "commits": "offset commits after acknowledged batches",
    "commit_failures": "offset commits refused (rebalance); those records are sent again",
}


@dataclass
class DestinationMetrics:
    name: str
    type: str
    consumed: int = 0
    skipped: int = 0
    sent: int = 0
    duplicates: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    requests: int = 0
    commits: int = 0
    commit_failures: int = 0
    #: records on the source topic not yet committed by this destination's group, per partition
    lag_by_partition: dict[int, int] = field(default_factory=dict)
    #: false from a failed request until the next acknowledged one
    up: bool = True
    last_error: str = ""
    last_error_time: float = 0.0
    last_success_time: float = 0.0

    @property
    def lag(self) -> int:
        return sum(self.lag_by_partition.values())

    def error(self, message: str) -> None:
        self.up = False
        self.last_error = message
        self.last_error_time = time.time()

    def success(self) -> None:
        self.up = True
        self.last_success_time = time.time()

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _COUNTERS}
        out.update(
            name=self.name,
            type=self.type,
            lag=self.lag,
            up=self.up,
            last_error=self.last_error,
        )
        return out


@dataclass
class ForwardMetrics:
    destinations: dict[str, DestinationMetrics] = field(default_factory=dict)

    def for_destination(self, name: str, type_: str) -> DestinationMetrics:
        if name not in self.destinations:
            self.destinations[name] = DestinationMetrics(name=name, type=type_)
        return self.destinations[name]

    def render_prometheus(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        dests = list(self.destinations.values())
        for key, help_text in _COUNTERS.items():
            metric = f"cadr_forward_{key}_total"
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} counter")
            lines.extend(f"{metric}{{{_labels(d)}}} {getattr(d, key)}" for d in dests)
        lines.append("# HELP cadr_forward_lag_records records on the source topic not yet forwarded")
        lines.append("# TYPE cadr_forward_lag_records gauge")
        for d in dests:
            for partition, lag in sorted(d.lag_by_partition.items()):
                lines.append(f'cadr_forward_lag_records{{{_labels(d)},partition="{partition}"}} {lag}')
        lines.append("# HELP cadr_forward_up 1 when the last request to the destination succeeded")
        lines.append("# TYPE cadr_forward_up gauge")
        lines.extend(f"cadr_forward_up{{{_labels(d)}}} {int(d.up)}" for d in dests)
        lines.append(
            "# HELP cadr_forward_last_success_timestamp_seconds time of the last acknowledged request"
        )
        lines.append("# TYPE cadr_forward_last_success_timestamp_seconds gauge")
        lines.extend(
            f"cadr_forward_last_success_timestamp_seconds{{{_labels(d)}}} {d.last_success_time:.3f}"
            for d in dests
        )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(d: DestinationMetrics) -> str:
    return f'destination="{_escape(d.name)}",type="{_escape(d.type)}"'


async def serve_metrics(metrics: ForwardMetrics, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` on host:port until the returned runner is cleaned up."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render_prometheus(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
