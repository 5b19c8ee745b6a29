"""``cadr incidents tail``: follow the incident topic and print each story as it changes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from typing import TextIO

from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.text import escape_controls

__all__ = ["register", "tail_incidents"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "incidents", help="follow incident stories", description="Work with incident stories."
    )
    sub = p.add_subparsers(dest="incidents_command", metavar="SUBCOMMAND")
    t = sub.add_parser(
        "tail",
        help="subscribe to the incident topic and print each story as it changes",
        description="Print every new revision of every incident from the incident topic (Ctrl-C to stop).",
    )
    t.add_argument("--json", action="store_true", help="print each revision as one JSON record per line")
    t.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest retained revision (default: only new ones)",
    )
    t.add_argument(
        "--limit", type=int, default=0, help="exit after N revisions (default: 0 = run until Ctrl-C)"
    )
    t.add_argument(
        "--min-severity", default="info", help="hide incidents below this severity (default: info)"
    )
    t.set_defaults(handler=_handle)
    p.set_defaults(handler=lambda args, settings: (p.print_help(), 2)[1])


async def tail_incidents(
    settings: Settings,
    *,
    as_json: bool = False,
    from_beginning: bool = False,
    limit: int = 0,
    min_severity: str = "info",
    out: TextIO | None = None,
) -> int:
    """Consume ``cadr.incidents`` and print revisions; returns how many were printed."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaConnectionError

    from cadr.render import render_incident
    from schemas.codec import decode_incident
    from schemas.errors import RecordError
    from schemas.records import Severity
    from streams.kafka_access import client_options

    stream = out or sys.stdout
    floor = Severity(min_severity).rank
    consumer = AIOKafkaConsumer(
        settings.topic("incidents"),
        bootstrap_servers=settings.kafka.bootstrap,
        **client_options(settings.kafka),
        group_id=None,
        client_id=f"cadr-tail-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        raise CadrError(f"cannot reach Kafka at {settings.kafka.bootstrap}: {exc}") from exc
    printed = 0
    try:
        async for msg in consumer:
            if msg.value is None:
                continue
            try:
                inc = decode_incident(msg.value)
            except RecordError as exc:
                note = f"cadr: skipping undecodable incident at offset {msg.offset}: {exc}"
                print(escape_controls(note), file=sys.stderr)
                continue
            if inc.severity.rank < floor:
                continue
            if as_json:
                stream.write(msg.value.decode() + "\n")
            else:
                stream.write(render_incident(inc) + "\n\n")
            stream.flush()
            printed += 1
            if limit and printed >= limit:
                break
    finally:
        await consumer.stop()
    return printed


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka.bootstrap:
        raise CadrError("no Kafka to read from: pass --kafka HOST:PORT (or set CADR_KAFKA_BOOTSTRAP)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            tail_incidents(
                settings,
                as_json=args.json,
                from_beginning=args.from_beginning,
                limit=args.limit,
                min_severity=args.min_severity,
            )
        )
    return 0
