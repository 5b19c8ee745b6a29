"""``cadr sensor <kind>``: run one sensor of this node.

Kinds are sub-commands, each registered by its own ``_register_<kind>(sub)`` function:
``ebpf`` (the kernel sensor, below) and ``audit`` (the Kubernetes audit intake, filled in
by its owner in :func:`_register_audit`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from schemas.settings import Settings

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sensor",
        help="run one sensor (ebpf, audit) publishing to Kafka",
        description="Run one sensor of this node. Each kind publishes raw events to the cadr.raw topic.",
    )
    sub = parser.add_subparsers(dest="sensor_kind", metavar="KIND")
    _register_ebpf(sub)
    _register_audit(sub)
    parser.set_defaults(handler=lambda args, settings: _no_kind(parser))


def _no_kind(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# ------------------------------------------------------------------------------------ ebpf


def _register_ebpf(sub: Any) -> None:
    p = sub.add_parser(
        "ebpf",
        help="the eBPF node sensor (needs root and kernel BTF)",
        description=(
            "Trace processes, file opens, connections, DNS queries and privilege changes with CO-RE "
            "BPF programs on tracepoints, attribute them to containers and pods, and publish them to "
            "Kafka (spooling to disk while Kafka is unreachable) or write JSON lines."
        ),
    )
    _add_destination(p)
    p.add_argument("--topic", help="topic to publish to (default: <topic prefix>raw, i.e. cadr.raw)")
    p.add_argument(
        "--spool-dir",
        help="where events wait while Kafka is unreachable "
        "(default: sensor.spool_dir setting, else <data dir>/spool/ebpf)",
    )
    p.add_argument(
        "--ring-mb", type=int, default=16, help="ring buffer size in MiB, a power of two (default: 16)"
    )
    p.add_argument(
        "--args-max", type=int, default=1024, help="bytes of argv captured per exec (default: 1024)"
    )
    p.add_argument(
        "--dns-port",
        type=int,
        action="append",
        help="UDP destination port treated as DNS; repeat for several, at most 4 (default: 53)",
    )
    p.add_argument(
        "--sensitive",
        action="append",
        metavar="PREFIX",
        help="extra path prefix whose reads are reported once per process (default: the built-in list)",
    )
    p.add_argument(
        "--v1-controller",
        default="auto",
        help="cgroup v1 controller used to find containers on v1/hybrid hosts; '' to disable (default: auto)",
    )
    _add_kube_access(
        p, "API server whose pods of this node name the workloads (default: off: container ids only)"
    )
    p.add_argument(
        "--host-cgroup",
        default="",
        metavar="DIR",
        help="where the host's /sys/fs/cgroup is mounted, when running in a pod "
        "(default: '', the cgroup mounts of this mount namespace)",
    )
    p.add_argument(
        "--workloads",
        metavar="JSON",
        help="static container id -> workload map {id: {namespace, pod, container, ...}} (default: none)",
    )
    p.add_argument(
        "--node", help="node name stamped on events and exec ids (default: node setting / hostname)"
    )
    p.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics on HOST:PORT (default: off)"
    )
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until signalled)"
    )
    p.add_argument(
        "--bpf-object",
        help="compiled BPF object (default: sensors/ebpf/build/cadr.bpf.o, built on demand by build.sh)",
    )
    p.set_defaults(handler=_run_ebpf)


def _run_ebpf(args: argparse.Namespace, settings: Settings) -> int:
    from sensors.ebpf.loader import DEFAULT_OBJECT, DEFAULT_SENSITIVE_PREFIXES
    from sensors.ebpf.service import RunOptions, run_ebpf_sensor

    if args.node:
        settings.node = args.node
    opts = RunOptions(
        output=args.output,
        bootstrap=args.sensor_kafka,
        topic=args.topic,
        spool_dir=args.spool_dir,
        object_path=args.bpf_object or str(DEFAULT_OBJECT),
        ring_bytes=args.ring_mb << 20,
        args_max=args.args_max,
        dns_ports=tuple(args.dns_port or (53,)),
        sensitive_prefixes=DEFAULT_SENSITIVE_PREFIXES + tuple(args.sensitive or ()),
        v1_controller=args.v1_controller,
        host_cgroup=args.host_cgroup,
        duration_s=args.duration,
        metrics=args.metrics,
        workloads_file=args.workloads,
    )
    opts.k8s_api, opts.k8s_token_file, opts.k8s_ca_file = _kube_access(args)

    _run_until_signalled(lambda stop: run_ebpf_sensor(settings, opts, stop))
    return 0


# ----------------------------------------------------------------------------------- audit


def _register_audit(sub: Any) -> None:
    """``cadr sensor audit``: the Kubernetes audit intake (HTTPS webhook and/or log file tailers)."""
    p = sub.add_parser(
        "audit",
        help="the Kubernetes audit intake: HTTPS webhook for the API server and/or audit log tailer",
        description=(
            "Receive audit.k8s.io events from the API server's webhook backend (HTTPS, client certificate "
            "and/or bearer token) and/or follow audit log files (JSON lines, rotation-safe, resumes after a "
            "restart); normalize them to k8s_api events and publish to cadr.raw (rejects to cadr.dlq). "
            "A webhook batch is answered 200 only once Kafka acknowledged it. Without TLS settings, a CA, "
            "server and client certificates, a token and the API server's webhook kubeconfig are generated "
            "under <data dir>/audit-tls."
        ),
    )
    _add_destination(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="webhook address (default: audit.host:audit.port, 127.0.0.1:8443)",
    )
    p.add_argument("--tls-cert", help="server certificate (PEM) (default: audit.tls_cert, else generated)")
    p.add_argument("--tls-key", help="server private key (PEM) (default: audit.tls_key, else generated)")
    p.add_argument(
        "--client-ca",
        help="CA bundle; a client certificate signed by it is required (default: audit.client_ca)",
    )
    p.add_argument(
        "--token-file", help="file with the bearer token callers must send (default: audit.token_file)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest webhook body accepted (default: audit.max_body_bytes, 32 MiB)",
    )
    p.add_argument(
        "--no-webhook", action="store_true", help="do not run the webhook, only tail files (default: run it)"
    )
    p.add_argument(
        "--insecure-no-client-auth",
        action="store_true",
        help="accept callers without client certificate or token (default: refuse to start that way)",
    )
    p.add_argument(
        "--file",
        action="append",
        metavar="PATH",
        help="audit log file to follow (--audit-log-path); repeat for several (default: audit.log_files)",
    )
    p.add_argument("--state-dir", help="where tailer positions are kept (default: <data dir>/audit-tail)")
    p.add_argument(
        "--from-end",
        action="store_true",
        help="start a file never seen before at its end instead of its beginning (default: beginning)",
    )
    _add_kube_access(p, "API server URL for pod metadata (owner chain, service account, IPs) (default: off)")
    p.add_argument("--node", help="node name stamped on events (default: node setting / hostname)")
    p.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: run until signalled)"
    )
    p.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace, settings: Settings) -> int:
    from cadr.runtime import relax_cyclic_gc
    from sensors.audit.service import AuditRunOptions, run_audit_sensor

    audit = settings.audit
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        audit.host, audit.port = host.strip("[]") or audit.host, int(port)
    for flag, name in (
        ("tls_cert", "tls_cert"),
        ("tls_key", "tls_key"),
        ("client_ca", "client_ca"),
        ("token_file", "token_file"),
        ("max_body_bytes", "max_body_bytes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(audit, name, value)
    if args.node:
        settings.node = args.node
    kube_api, kube_token, kube_ca = _kube_access(args)
    opts = AuditRunOptions(
        webhook=not args.no_webhook,
        files=list(args.file or audit.log_files),
        state_dir=args.state_dir or "",
        start_at_end=args.from_end,
        bootstrap=args.sensor_kafka or "",
        output=args.output or "",
        allow_unauthenticated=args.insecure_no_client_auth,
        kube_api=kube_api,
        kube_token_file=kube_token,
        kube_ca=kube_ca,
        duration_s=args.duration,
        tune_gc=functools.partial(relax_cyclic_gc, freeze=True),
    )

    _run_until_signalled(lambda stop: run_audit_sensor(settings, opts, stop))
    return 0


# ----------------------------------------------------------------------------- shared


def _add_destination(p: argparse.ArgumentParser) -> None:
    """Where a sensor's events go: Kafka (``--kafka``, else the global one) or JSON lines (``--output``)."""
    p.add_argument(
        "--kafka",
        dest="sensor_kafka",
        metavar="BOOTSTRAP",
        help="Kafka bootstrap servers (default: the global --kafka / kafka.bootstrap setting)",
    )
    p.add_argument(
        "--output",
        metavar="FILE|-",
        help="write JSON lines to FILE (- = stdout) instead of publishing to Kafka (default: Kafka)",
    )


def _run_until_signalled(run: Callable[[asyncio.Event], Awaitable[object]]) -> None:
    """Run a sensor until it returns, or until SIGINT/SIGTERM sets the event it watches."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main())


def _add_kube_access(p: argparse.ArgumentParser, api_help: str) -> None:
    """The flags that give a sensor the Kubernetes API (pod metadata), the same for every sensor."""
    p.add_argument("--kube-api", metavar="URL", help=api_help)
    p.add_argument("--kube-token-file", help="bearer token file for --kube-api (default: none)")
    p.add_argument("--kube-ca", help="CA file for --kube-api (default: system trust)")
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="pod metadata from the in-cluster API with this pod's service account (default: off)",
    )


def _kube_access(args: argparse.Namespace) -> tuple[str, str, str]:
    """(API URL, token file, CA file) from the flags of :func:`_add_kube_access`; ``--in-cluster`` fills
    what is not given with the pod's own service account."""
    api, token, ca = args.kube_api or "", args.kube_token_file or "", args.kube_ca or ""
    if args.in_cluster:
        from sensors.k8s.watcher import IN_CLUSTER_CA, IN_CLUSTER_TOKEN

        api = api or "https://kubernetes.default.svc"
        token, ca = token or IN_CLUSTER_TOKEN, ca or IN_CLUSTER_CA
    return api, token, ca
