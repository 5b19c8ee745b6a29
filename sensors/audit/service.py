"""``cadr sensor audit``: run the webhook and/or file tailers, with optional pod metadata from the API.

One :class:`AuditRunOptions` (built by the CLI from flags and :class:`~schemas.settings.Settings`) says what
to run; :func:`run_audit_sensor` starts it and returns when ``stop`` is set. Publishing goes to Kafka
(``cadr.raw``/``cadr.dlq``) or, with ``output``, to JSON lines for a quick look without Kafka.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.settings import AuditSettings, Settings
from sensors.audit.credentials import ensure_local_credentials
from sensors.audit.errors import AuditError
from sensors.audit.sink import KafkaSink, Sink
from sensors.audit.tailer import AuditLogTailer
from sensors.audit.webhook import AuditWebhook
from sensors.jsonlines import JsonLinesSink
from streams.kafka_access import client_options

__all__ = ["AuditRunOptions", "run_audit_sensor"]

log = logging.getLogger(__name__)


@dataclass
class AuditRunOptions:
    webhook: bool = True
    files: list[str] = field(default_factory=list)
    state_dir: str = ""
    start_at_end: bool = False
    bootstrap: str = ""
    output: str = ""  # JSON lines to this file ("-" = stdout) instead of Kafka
    allow_unauthenticated: bool = False
    kube_api: str = ""
    kube_token_file: str = ""
    kube_ca: str = ""
    duration_s: float | None = None
    publish_timeout_s: float = 30.0
    #: called once everything is up: the CLI tunes the cyclic garbage collector of the process here (the
    #: sensor does not decide that for a process it may be embedded in)
    tune_gc: Callable[[], None] | None = None


def _sink(settings: Settings, opts: AuditRunOptions) -> Sink:
    if opts.output:
        return JsonLinesSink(opts.output)
    bootstrap = opts.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise AuditError("no Kafka to publish to: pass --kafka (or set kafka.bootstrap), or --output FILE")
    return KafkaSink(
        bootstrap,
        settings.topic("raw"),
        settings.topic("dlq"),
        compression=settings.kafka.compression,
        timeout_s=opts.publish_timeout_s,
        kafka_options=client_options(settings.kafka),
    )


def webhook_settings(settings: Settings) -> AuditSettings:
    """The audit settings, with generated TLS material and a token when none are configured."""
    audit = settings.audit
    if audit.tls_cert or audit.client_ca or audit.token_file:
        return audit
    creds = ensure_local_credentials(
        Path(settings.data_dir) / "audit-tls",
        server_url=f"https://{audit.host}:{audit.port}/audit",
    )
    log.warning(
        "no audit TLS configured: using generated credentials in %s; point the API server at %s",
        creds.directory,
        creds.kubeconfig,
    )
    # (every other setting, limits and timeouts included, as configured)
    return dataclasses.replace(
        audit,
        tls_cert=str(creds.server_cert),
        tls_key=str(creds.server_key),
        client_ca=str(creds.ca_cert),
        token_file=str(creds.token_file),
        log_files=list(audit.log_files),
    )


def _pod_cache(settings: Settings, opts: AuditRunOptions) -> tuple[Any, Any]:
    if not opts.kube_api:
        return None, None
    from sensors.k8s import PodCache, PodWatcher, build_api_client

    cache = PodCache(cluster=settings.cluster)
    client = build_api_client(opts.kube_api, token_file=opts.kube_token_file, ca_file=opts.kube_ca)
    # the intake sees API calls about every pod: watch all nodes
    watcher = PodWatcher(client, cache)
    watcher.start()
    return cache, watcher


async def run_audit_sensor(settings: Settings, opts: AuditRunOptions, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (or ``opts.duration_s`` passes)."""
    if not opts.webhook and not opts.files:
        raise AuditError("nothing to run: enable the webhook or give --file")
    cache, watcher = _pod_cache(settings, opts)
    tasks: list[asyncio.Task[None]] = []
    hook: AuditWebhook | None = None
    try:
        if opts.webhook:
            hook = AuditWebhook(
                webhook_settings(settings),
                _sink(settings, opts),
                cluster=settings.cluster,
                node=settings.node,
                pods=cache,
                allow_unauthenticated=opts.allow_unauthenticated,
            )
            await hook.start()
        state_dir = Path(opts.state_dir or Path(settings.data_dir) / "audit-tail")
        for i, path in enumerate(opts.files):
            tailer = AuditLogTailer(
                path,
                _sink(settings, opts),
                state_dir / f"{i}-{Path(path).name}.pos",
                cluster=settings.cluster,
                node=settings.node,
                pods=cache,
                start_at_end=opts.start_at_end,
            )
            tasks.append(asyncio.create_task(tailer.run(stop)))
        # once everything is up (a configuration error leaves the caller's process as it was)
        if opts.tune_gc is not None:
            opts.tune_gc()
        if opts.duration_s is not None:
            try:
                await asyncio.wait_for(stop.wait(), opts.duration_s)
            except TimeoutError:
                stop.set()
        else:
            await stop.wait()
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        stop.set()
        if hook is not None:
            await hook.stop()
        for t in tasks:
            t.cancel()
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
