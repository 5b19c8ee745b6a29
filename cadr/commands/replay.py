"""``cadr replay``: publish a capture file or a store selection back into the pipeline, marked replayed."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from cadr.commands.capture import add_selection_args, selection_from_args
from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.text import escape_controls
from streams.kafka_access import client_options

__all__ = ["progress_bar", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="publish captured or stored events back into cadr.raw (or a topic), in per-workload order",
        description=(
            "Publish events from a capture file (or from the store with --from-store and a selection) to "
            "cadr.raw, keyed by workload so each workload's events keep their order. Events are marked "
            "replayed: the store does not insert them twice, a fresh pipeline stores them. Original times are "
            "kept, so a new rule run over last week's events finds what it would have found live."
        ),
    )
    p.add_argument("capture", nargs="?", help="capture file to publish (omit with --from-store)")
    p.add_argument(
        "--from-store", action="store_true", help="replay a store selection instead of a file (default: off)"
    )
    p.add_argument(
        "--topic", default="raw", help="logical topic (raw, events ...) or a full topic name (default: raw)"
    )
    p.add_argument(
        "--rate", type=float, default=0.0, help="events per second (default: 0 = as fast as possible)"
    )
    p.add_argument(
        "--no-progress", action="store_true", help="do not draw the progress bar (default: draw on a tty)"
    )
    add_selection_args(p)
    p.set_defaults(handler=_handle)


def progress_bar(stream: TextIO = sys.stderr, width: int = 30) -> Callable[[int, int | None], None]:
    """A callback drawing ``[#####.....] done/total  rate/s`` on one line, at most 10 times a second."""
    started = time.monotonic()
    last = [0.0]

    def draw(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.1 and (total is None or done < total):
            return
        last[0] = now
        rate = done / max(now - started, 1e-9)
        if total:
            filled = int(width * min(done, total) / total)
            bar = "#" * filled + "." * (width - filled)
            stream.write(f"\r[{bar}] {done}/{total} events  {rate:,.0f}/s ")
        else:
            stream.write(f"\r{done} events  {rate:,.0f}/s ")
        stream.flush()

    return draw


def _count_and_iter(path: str) -> tuple[int, Iterator[bytes]]:
    from streams.forensics.capture import read_capture

    total = sum(1 for _ in read_capture(path))
    return total, read_capture(path)


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from streams.forensics.replay import replay_sync

    if not settings.kafka.bootstrap:
        raise CadrError("replay needs --kafka (or CADR_KAFKA_BOOTSTRAP): the pipeline's broker")
    topic = args.topic if "." in args.topic else settings.topic(args.topic)
    show = not args.no_progress and sys.stderr.isatty()
    progress = progress_bar() if show else None
    if args.from_store:
        if args.capture:
            raise CadrError("give a capture file or --from-store, not both")
        from streams.forensics.capture import store_selection
        from streams.forensics.reader import open_reader

        selection = selection_from_args(args)
        with open_reader(settings) as reader:
            count_sql, count_params = selection.sql(reader.database, columns="count()")
            count_sql = count_sql.replace(" ORDER BY time, event_id", "")
            total = int(reader.rows(count_sql, count_params)[0][0])
            if selection.limit:
                total = min(total, selection.limit)
            # Streamed from the store (a week of events need not fit in memory), paced by Kafka.
            report = replay_sync(
                store_selection(reader, selection),
                bootstrap=settings.kafka.bootstrap,
                kafka_options=client_options(settings.kafka),
                topic=topic,
                rate=args.rate,
                total=total,
                progress=progress,
            )
            source = f"the store ({reader.route})"
    else:
        if not args.capture:
            raise CadrError("give a capture file to replay, or --from-store with a selection")
        total, it = _count_and_iter(args.capture)
        source = args.capture
        report = replay_sync(
            it,
            bootstrap=settings.kafka.bootstrap,
            kafka_options=client_options(settings.kafka),
            topic=topic,
            rate=args.rate,
            total=total,
            progress=progress,
        )
    if show:
        sys.stderr.write("\n")
    print(
        f"cadr replay: published {report.published} event(s) from {source} to {topic} "
        f"in {report.seconds:.1f}s ({report.rate:,.0f}/s); skipped {report.skipped} invalid",
        file=sys.stderr,
    )
    for error in report.errors or []:
        print(escape_controls(f"cadr replay: skipped: {error}"), file=sys.stderr)
    return 0
