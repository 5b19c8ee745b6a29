"""``cadr up``: the whole pipeline on one machine with the embedded defaults."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from schemas.settings import Settings

__all__ = ["ebpf_available", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "up",
        help="run the whole pipeline on this machine (Kafka, worker, audit webhook, eBPF sensor)",
        description=(
            "Start the embedded stack: a local Kafka broker (unless --kafka), the worker with every stage and the "
            "chdb store under <data-dir>/store (with its read-only query endpoint on 127.0.0.1), the audit webhook "
            "on 127.0.0.1, and the eBPF sensor when running as root with kernel BTF. Children are restarted if "
            "they crash; Ctrl-C stops everything. Logs: <data-dir>/logs/."
        ),
    )
    p.add_argument(
        "--no-ebpf",
        action="store_true",
        help="do not start the eBPF sensor (default: start it when possible)",
    )
    p.add_argument(
        "--no-audit", action="store_true", help="do not start the audit webhook (default: start it)"
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after N seconds (default: 0 = until Ctrl-C)"
    )
    p.set_defaults(handler=_handle)


def ebpf_available() -> tuple[bool, str]:
    """Whether the eBPF sensor can run here, and if not, why."""
    if os.geteuid() != 0:
        return False, "not running as root (the eBPF sensor needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return False, "the kernel exposes no BTF at /sys/kernel/btf/vmlinux (CO-RE programs need it)"
    return True, ""


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from cadr.runtime import ChildProcess, embedded_kafka, ensure_topics_sync, spawn_cadr

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    specs: list[tuple[str, list[str]]] = [("worker", ["worker"])]
    if not args.no_audit:
        specs.append(("sensor-audit", ["sensor", "audit"]))
    if not args.no_ebpf:
        ok, why = ebpf_available()
        if ok:
            specs.append(("sensor-ebpf", ["sensor", "ebpf"]))
        else:
            print(f"cadr up: eBPF sensor not started: {why}", file=sys.stderr)
    with embedded_kafka(settings):
        ensure_topics_sync(settings)
        children: dict[str, ChildProcess] = {}
        restarts: dict[str, int] = {}
        for name, argv in specs:
            children[name] = spawn_cadr(name, argv, settings)
            print(
                f"cadr up: started {name} (pid {children[name].proc.pid}, log {children[name].log_path})",
                file=sys.stderr,
            )
        print(
            f"cadr up: running. Kafka {settings.kafka.bootstrap}; try `cadr --kafka {settings.kafka.bootstrap} "
            'incidents tail` and `cadr query "SELECT count() FROM cadr.events"`. Ctrl-C stops.',
            file=sys.stderr,
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        try:
            while not stop and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.5)
                for name, argv in specs:
                    child = children[name]
                    if child.alive():
                        continue
                    restarts[name] = restarts.get(name, 0) + 1
                    print(
                        f"cadr up: {name} exited ({child.proc.returncode}); last log lines:\n{child.tail(15)}",
                        file=sys.stderr,
                    )
                    if restarts[name] > 5:
                        print(f"cadr up: {name} keeps failing; stopping", file=sys.stderr)
                        stop = True
                        break
                    time.sleep(min(30, 2 ** restarts[name]))
                    children[name] = spawn_cadr(name, argv, settings)
        finally:
            for child in reversed(list(children.values())):
                child.stop()
    return 0 if not restarts or max(restarts.values()) <= 5 else 1
