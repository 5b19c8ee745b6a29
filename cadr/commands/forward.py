"""``cadr forward``: run the SIEM forwarders of the config file (``[[forward.destinations]]``).

``cadr forward`` runs every enabled destination, each in its own Kafka consumer group,
until SIGINT/SIGTERM; ``cadr forward --test NAME`` sends one synthetic incident
straight to a destination and prints what it answered; ``cadr forward --list`` shows
the parsed destinations. docs/forward.md is the configuration reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.text import escape_controls
from streams.kafka_access import client_options

__all__ = ["register", "run_forward"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = subparsers.add_parser(
        "forward",
        help="run the SIEM forwarders of the config file",
        description=(
            "Forward incidents (and alerts) to Splunk HEC, Elasticsearch/OpenSearch, syslog (TCP/TLS), "
            "webhooks and Kafka. Each destination is its own consumer group and commits only after the "
            "destination acknowledged, so a destination that is down loses nothing. See docs/forward.md."
        ),
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this destination (repeatable; default: every enabled destination)",
    )
    p.add_argument(
        "--test",
        metavar="NAME",
        help="send one test incident to destination NAME, print its answer and exit (default: off)",
    )
    p.add_argument(
        "--list", action="store_true", help="print the configured destinations and exit (default: off)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on forward.metrics_host:PORT (default: forward.metrics_port, 0 = off)",
    )
    p.add_argument("--json", action="store_true", help="with --test or --list: print JSON (default: text)")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from streams.forward.parse import parse_forward_config

    config = parse_forward_config(settings.forward, topic_prefix=settings.kafka.topic_prefix)
    if args.metrics_port is not None:
        import dataclasses

        config = dataclasses.replace(config, metrics_port=args.metrics_port)
    if args.list:
        return _list(config, as_json=args.json)
    if args.test:
        return _test(settings, config.destination(args.test), as_json=args.json)
    if not settings.kafka.bootstrap:
        raise CadrError("cadr forward needs Kafka: pass --kafka HOST:PORT or set kafka.bootstrap")
    asyncio.run(run_forward(settings, config, only=args.only))
    return 0


def _list(config: Any, *, as_json: bool) -> int:
    rows = [
        {
            "name": d.name,
            "type": d.type,
            "records": d.records,
            "format": d.format,
            "min_severity": str(d.min_severity),
            "enabled": d.enabled,
            "group_id": d.group_id,
            "dead_letter_topic": d.dead_letter_topic,
        }
        for d in config.destinations
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no destinations configured ([[forward.destinations]])")
    else:
        for r in rows:
            state = "" if r["enabled"] else " (disabled)"
            print(
                f"{r['name']}{state}: {r['type']} {r['records']} as {r['format']}, >= {r['min_severity']}; "
                f"group {r['group_id']}, dead letters to {r['dead_letter_topic']}"
            )
    return 0


def _test(settings: Settings, dest: Any, *, as_json: bool) -> int:
    from streams.forward.consumer import send_test

    result = asyncio.run(send_test(dest, node=settings.node))
    if as_json:
        print(json.dumps({"ok": result.ok, "message": result.message, "reply": result.reply}, default=str))
    else:
        print(escape_controls(f"{dest.name}: {result.message}"))
        if result.reply is not None:
            print(f"reply: {json.dumps(result.reply, default=str)}")
    return 0 if result.ok else 1


async def run_forward(settings: Settings, config: Any, *, only: list[str] | None = None) -> None:
    """Run the forwarder until SIGINT/SIGTERM (work in flight is simply not committed)."""
    from cadr.topics import TopicError, ensure_topics
    from streams.forward.consumer import Forwarder

    forwarder = Forwarder(settings, config, only=only or ())
    try:
        await ensure_topics(
            settings.kafka.bootstrap,
            forwarder.dead_letter_specs(),
            client_options=client_options(settings.kafka),
        )
    except TopicError as exc:
        # best effort: a cluster that forbids creating topics may auto-create them on the first write, or an
        # operator creates them; a dead letter that cannot be written is retried until it can
        log.warning("%s", exc)
    names = ", ".join(r.cfg.name for r in forwarder.runners)
    print(f"cadr: forwarding {settings.topic('incidents')} to {names}", file=sys.stderr, flush=True)
    task = asyncio.create_task(forwarder.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
