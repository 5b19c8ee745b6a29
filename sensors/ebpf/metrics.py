"""Prometheus text exposition of the sensor's counters (``--metrics HOST:PORT``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["render", "serve"]


def render(counters: dict[str, Any]) -> str:
    """Counters of :meth:`EbpfSensor.counters` in the Prometheus text format."""
    lines: list[str] = []

    def metric(name: str, help_: str, kind: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP cadr_sensor_{name} {help_}")
        lines.append(f"# TYPE cadr_sensor_{name} {kind}")
        for labels, value in samples:
            lines.append(f"cadr_sensor_{name}{labels} {value}")

    kernel = counters["kernel"]
    metric("kernel_events_total", "records the BPF programs wrote", "counter", [("", kernel["events"])])
    metric(
        "kernel_drops_total",
        "records lost in the kernel (ring buffer full), per CPU",
        "counter",
        [(f'{{cpu="{i}"}}', v) for i, v in enumerate(counters["kernel_drops_per_cpu"])],
    )
    metric(
        "user_drops_total",
        "records lost in user space (undecodable, or the sink failed), per CPU",
        "counter",
        [(f'{{cpu="{i}"}}', v) for i, v in enumerate(counters["user_drops_per_cpu"])],
    )
    metric("kernel_bytes_total", "bytes the BPF programs wrote", "counter", [("", kernel["bytes"])])
    metric("opens_seen_total", "file opens the kernel examined", "counter", [("", kernel["open_seen"])])
    metric(
        "opens_suppressed_total",
        "file opens filtered in the kernel (dedup, pseudo filesystems)",
        "counter",
        [("", kernel["open_suppressed"])],
    )
    metric(
        "decoded_events_total", "events decoded in user space", "counter", [("", counters["decoded_events"])]
    )
    metric(
        "ring_pending_bytes",
        "bytes waiting in the ring buffer",
        "gauge",
        [("", counters["ring_pending_bytes"])],
    )
    attribution = counters.get("attribution", {})
    if attribution:
        metric(
            "held_events",
            "events of containers whose pod is not known yet, waiting for it",
            "gauge",
            [("", attribution["held"])],
        )
        metric(
            "attributed_late_events_total",
            "events that waited for their pod and left with its workload",
            "counter",
            [("", attribution["attributed_late"])],
        )
        metric(
            "unattributed_events_total",
            "events of Kubernetes containers that left without a pod (not known in time)",
            "counter",
            [("", attribution["unattributed"])],
        )
    sink = counters.get("sink", {})
    for key in ("published", "acked", "spooled", "spool_dropped", "spool_bytes", "written"):
        if key in sink:
            kind = "gauge" if key == "spool_bytes" else "counter"
            name = f"sink_{key}" + ("" if kind == "gauge" else "_total")
            metric(name, f"sink counter {key}", kind, [("", sink[key])])
    return "\n".join(lines) + "\n"


async def serve(host: str, port: int, counters: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Serve ``/metrics`` on host:port until the returned runner is cleaned up."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=render(counters()), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
