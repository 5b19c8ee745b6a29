"""Run the eBPF sensor as a service: what ``cadr sensor ebpf`` and ``cadr up`` call.

::

    stop = asyncio.Event()
    await run_ebpf_sensor(settings, RunOptions(output="-"), stop=stop)

Checks the machine first (:func:`check_available` raises
:class:`~sensors.ebpf.errors.SensorUnavailableError` naming what is missing), then loads
the programs, starts the sink (Kafka publisher with its spool, or JSON lines), serves
metrics if asked, and streams until ``stop`` is set or ``duration_s`` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from schemas.records import Workload
from schemas.settings import Settings
from sensors.containers import StaticWorkloadResolver, WorkloadResolver
from sensors.ebpf import metrics
from sensors.ebpf.errors import SensorError, SensorUnavailableError
from sensors.ebpf.loader import DEFAULT_OBJECT, DEFAULT_SENSITIVE_PREFIXES, ProbeConfig, preflight
from sensors.ebpf.sensor import EbpfSensor, PublisherSink, SensorOptions, Sink
from sensors.jsonlines import JsonLinesSink
from sensors.publisher import Publisher
from streams.kafka_access import client_options

__all__ = ["RunOptions", "check_available", "load_workloads", "run_ebpf_sensor"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Per-run choices (the rest comes from :class:`~schemas.settings.Settings`)."""

    #: JSON lines to this file (``-`` = stdout) instead of Kafka
    output: str | None = None
    #: Kafka bootstrap (default: settings.kafka.bootstrap)
    bootstrap: str | None = None
    #: topic (default: settings.topic("raw"))
    topic: str | None = None
    spool_dir: str | None = None
    object_path: str = str(DEFAULT_OBJECT)
    ring_bytes: int = 16 << 20
    args_max: int = 1024
    dns_ports: tuple[int, ...] = (53,)
    sensitive_prefixes: tuple[str, ...] = DEFAULT_SENSITIVE_PREFIXES
    v1_controller: str = "auto"
    #: the host's /sys/fs/cgroup as mounted in a pod ("" = this mount namespace's)
    host_cgroup: str = ""
    poll_interval_s: float = 0.01
    duration_s: float | None = None
    #: "host:port" for Prometheus metrics, or None
    metrics: str | None = None
    #: a JSON file {container_id: {namespace, pod, ...}} for a static resolver
    workloads_file: str | None = None
    resolver: WorkloadResolver | None = None
    #: Kubernetes API server URL: watch this node's pods to name workloads ("" = no API)
    k8s_api: str = ""
    k8s_token_file: str = ""
    k8s_ca_file: str = ""
    #: how long to wait for the first pod list before streaming (events flow meanwhile)
    k8s_sync_timeout_s: float = 10.0


def check_available(object_path: str | None = None) -> None:
    """Raise SensorUnavailableError saying what this machine lacks for the sensor."""
    missing = preflight(object_path)
    if missing:
        raise SensorUnavailableError("the eBPF sensor cannot run here; missing: " + "; ".join(missing))


def load_workloads(path: str) -> StaticWorkloadResolver:
    """A static resolver from ``{container_id: {namespace, pod, container, ...}}`` JSON."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SensorError(f"cannot read workloads file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SensorError(f"{path}: expected an object mapping container ids to workloads")
    resolver = StaticWorkloadResolver()
    for cid, fields in data.items():
        try:
            resolver.add(cid, Workload(**fields))
        except TypeError as exc:
            raise SensorError(f"{path}: workload of {cid}: {exc}") from exc
    return resolver


def _sink(settings: Settings, opts: RunOptions) -> Sink:
    if opts.output:
        return JsonLinesSink(opts.output)
    bootstrap = opts.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise SensorError(
            "no Kafka to publish to: pass --kafka HOST:PORT (or --output FILE|- for JSON lines)"
        )
    spool = opts.spool_dir or settings.sensor.spool_dir or str(Path(settings.data_dir) / "spool" / "ebpf")
    publisher = Publisher(
        bootstrap,
        opts.topic or settings.topic("raw"),
        spool,
        spool_max_bytes=settings.sensor.spool_max_bytes,
        compression=settings.kafka.compression or None,
        kafka_options=client_options(settings.kafka),
    )
    return PublisherSink(publisher)


async def run_ebpf_sensor(
    settings: Settings, opts: RunOptions, stop: asyncio.Event | None = None
) -> EbpfSensor:
    """Run until ``stop`` is set (or ``opts.duration_s``); returns the stopped sensor."""
    check_available(opts.object_path)
    watcher = None
    resolver = opts.resolver or (load_workloads(opts.workloads_file) if opts.workloads_file else None)
    if resolver is None and opts.k8s_api:
        from sensors.k8s import PodCache, PodWatcher, build_api_client

        cache = PodCache(settings.cluster)
        api = build_api_client(opts.k8s_api, token_file=opts.k8s_token_file, ca_file=opts.k8s_ca_file)
        watcher = PodWatcher(api, cache, node_name=settings.node)
        watcher.start()
        if not await asyncio.to_thread(watcher.wait_synced, opts.k8s_sync_timeout_s):
            log.warning("no pod list from %s yet; containers are reported by id until it comes", opts.k8s_api)
        resolver = cache
    sink = _sink(settings, opts)
    sensor = EbpfSensor(
        SensorOptions(
            node=settings.node,
            cluster=settings.cluster,
            probe=ProbeConfig(
                object_path=opts.object_path,
                ring_bytes=opts.ring_bytes,
                args_max=opts.args_max,
                dns_ports=opts.dns_ports,
                sensitive_prefixes=opts.sensitive_prefixes,
                v1_controller=opts.v1_controller,
                host_cgroup=opts.host_cgroup,
            ),
            poll_interval_s=opts.poll_interval_s,
            health_interval_s=settings.sensor.health_interval_s,
            attribution_hold_s=settings.sensor.attribution_hold_s,
        ),
        sink,
        resolver,
    )
    runner = None
    try:
        if isinstance(sink, PublisherSink):
            await sink.publisher.start()
        sensor.start()
        if opts.metrics:
            host, _, port = opts.metrics.rpartition(":")
            runner = await metrics.serve(host or "127.0.0.1", int(port), sensor.counters)
        task = asyncio.create_task(sensor.run(opts.duration_s))
        if stop is not None:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                sensor.stop()
            else:
                stopper.cancel()
        await task
    finally:
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await sink.aclose()
        sensor.close()
        if watcher is not None:
            watcher.stop()
    return sensor
