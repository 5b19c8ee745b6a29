"""``cadr capture``: write events from the store (time range + filter) or a topic to a capture file."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from schemas.errors import CadrError
from schemas.settings import Settings
from streams.kafka_access import client_options

if TYPE_CHECKING:
    from streams.forensics.capture import Selection

__all__ = ["add_selection_args", "register", "selection_from_args"]


def add_selection_args(p: argparse.ArgumentParser) -> None:
    """The store-selection flags shared by ``cadr capture`` and ``cadr replay --from-store``."""
    p.add_argument(
        "--since", default="-1h", help="selection start: ISO time, epoch, 'now' or '-7d' (default: -1h)"
    )
    p.add_argument("--until", default="now", help="selection end (default: now)")
    p.add_argument("--namespace", default="", help="only this namespace (default: all)")
    p.add_argument("--workload", default="", help="only this workload name (default: all)")
    p.add_argument("--pod", default="", help="only this pod (default: all)")
    p.add_argument(
        "--kind", action="append", default=[], help="only these event kinds (repeatable; default: all)"
    )
    p.add_argument("--node", default="", help="only events from this node (default: all)")
    p.add_argument(
        "--where",
        default="",
        help="extra SQL condition on the events table, run read-only (default: none)",
    )
    p.add_argument("--limit", type=int, default=0, help="at most this many events (default: 0 = no limit)")


def selection_from_args(args: argparse.Namespace) -> Selection:
    from streams.forensics.capture import Selection
    from streams.forensics.named import parse_time_ns

    return Selection(
        since_ns=parse_time_ns(args.since),
        until_ns=parse_time_ns(args.until),
        namespace=args.namespace,
        workload=args.workload,
        pod=args.pod,
        kinds=list(args.kind),
        node=args.node,
        where=args.where,
        limit=max(0, args.limit),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "capture",
        help="write events from the store or a topic to a capture file (JSON lines, .zst = zstd)",
        description=(
            "Write events to a capture file: one JSON event per line in time order, zstd-compressed when the "
            "file name ends in .zst (or with --zstd). By default the events come from the store, selected by "
            "time range and filters; with --topic they come from a Kafka topic (what it holds now)."
        ),
    )
    p.add_argument("output", help="capture file to write (.jsonl, or .jsonl.zst for zstd)")
    p.add_argument(
        "--zstd", action="store_true", help="compress with zstd whatever the name (default: by suffix)"
    )
    p.add_argument(
        "--topic",
        default="",
        help="capture from this topic (logical name like 'events' or a full name) instead of the store "
        "(default: the store)",
    )
    add_selection_args(p)
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from streams.forensics.capture import capture_from_store, capture_from_topic
    from streams.forensics.named import parse_time_ns
    from streams.forensics.reader import open_reader

    compress = True if args.zstd else None
    if args.topic:
        if not settings.kafka.bootstrap:
            raise CadrError("capturing a topic needs --kafka (or CADR_KAFKA_BOOTSTRAP)")
        topic = args.topic if "." in args.topic else settings.topic(args.topic)
        since = parse_time_ns(args.since) if args.since != "-1h" else None
        until = parse_time_ns(args.until) if args.until != "now" else None
        count = capture_from_topic(
            settings.kafka.bootstrap,
            topic,
            args.output,
            since_ns=since,
            until_ns=until,
            compress=compress,
            kafka_options=client_options(settings.kafka),
        )
        source = f"topic {topic}"
    else:
        selection = selection_from_args(args)
        with open_reader(settings) as reader:
            count = capture_from_store(reader, selection, args.output, compress=compress)
            source = reader.route
    print(f"cadr capture: wrote {count} event(s) from {source} to {args.output}", file=sys.stderr)
    return 0
