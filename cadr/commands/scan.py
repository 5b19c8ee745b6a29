"""``cadr scan FILE...``: run the detection rules over files offline (no Kafka) and print the alerts.

What a rule author uses: point it at Kubernetes audit logs (JSON lines or one JSON document; native,
EventList, GKE or AKS envelopes) or at capture files of cadr events (JSON lines, optionally gzip or
zstd), with extra rule folders, and see what fires. Alerts are deduplicated as in the pipeline
(``streams.detect.scan_events``); ``--json`` prints Alert records, one per line.

Exit status: 0, or 1 with ``--fail-on SEVERITY`` when an alert at or above it fired; input lines that
cannot be read are reported on stderr (file:line and why) and counted, and do not stop the scan.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from schemas.codec import decode_event, encode
from schemas.errors import CadrError, RecordError
from schemas.records import Alert, Event, Severity
from schemas.settings import Settings
from schemas.text import escape_controls

__all__ = ["read_events", "register"]


class ScanInputError(CadrError):
    """A file given to ``cadr scan`` cannot be read at all."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "scan",
        help="run the rules over audit logs or capture files offline and print the alerts",
        description=(
            "Read Kubernetes audit logs (JSON lines or a JSON document: Event, EventList, GKE or AKS "
            "entries) and cadr capture files (event JSON lines, optionally .gz/.zst), run the detection "
            "rules over the events in time order without Kafka, and print the alerts."
        ),
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audit log or capture file(s); - reads stdin")
    p.add_argument("--json", action="store_true", help="print Alert records as JSON lines (default: text)")
    p.add_argument(
        "--stories",
        action="store_true",
        help="also correlate the alerts into incident stories and print them (with --json: Incident records "
        "instead of alerts) - to test whole scenarios offline (default: alerts only)",
    )
    p.add_argument(
        "--rules-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="extra rules folder, repeatable (default: the built-in rules plus detect.rules_dirs)",
    )
    p.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="ID",
        help="rule id to skip, repeatable (default: none)",
    )
    p.add_argument(
        "--fail-on",
        choices=[s.value for s in Severity],
        help="exit 1 when an alert of this severity or above fired (default: always exit 0)",
    )
    p.add_argument("--cluster", help="cluster name stamped on audit events (default: the cluster setting)")
    p.set_defaults(handler=_run)


def _open_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScanInputError(f"{path}: {exc.strerror or exc}") from exc
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _is_cadr_event(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and "event_id" in obj
        and "source" in obj
        and "kind" in obj
        and "auditID" not in obj
    )


def read_events(path: str, *, cluster: str = "", errors: TextIO | None = None) -> tuple[list[Event], int]:
    """Every event of one file, and how many lines were unreadable (reported to ``errors``)."""
    from sensors.audit.envelope import unwrap
    from sensors.audit.errors import AuditFormatError
    from sensors.audit.normalize import normalize

    data = _open_bytes(path)
    events: list[Event] = []
    bad = 0

    def report(line: int, why: str) -> None:
        nonlocal bad
        bad += 1
        if errors is not None:
            errors.write(escape_controls(f"{path}:{line}: {why}") + "\n")

    def docs() -> Iterator[tuple[int, Any]]:
        stripped = data.strip()
        if not stripped:
            return
        try:
            yield 1, orjson.loads(stripped)  # one (maybe pretty-printed) document
            return
        except orjson.JSONDecodeError:
            pass
        for no, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield no, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report(no, f"invalid JSON: {exc}")

    for no, doc in docs():
        if _is_cadr_event(doc):
            try:
                events.append(decode_event(doc))
            except RecordError as exc:
                report(no, str(exc))
            continue
        try:
            items = unwrap(doc)
        except AuditFormatError as exc:
            report(no, str(exc))
            continue
        for item in items:
            try:
                events.append(normalize(item, cluster=cluster))
            except AuditFormatError as exc:
                report(no, str(exc))
    return events, bad


def _fmt_time(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _print_text(alerts: list[Alert], out: TextIO) -> None:
    for a in alerts:
        count = f" (x{a.count})" if a.count > 1 else ""
        line = f"{_fmt_time(a.time)}  {a.severity.value:<8} {a.rule_id}  {a.rule_name}: {a.message}{count}"
        out.write(escape_controls(line) + "\n")


def _print_stories(alerts: list[Alert], settings: Settings, *, as_json: bool, fail_on: str | None) -> int:
    """Fold the alerts (in time order, count updates included) into stories and print them."""
    from cadr.render import render_incident
    from streams.correlate import Correlator

    correlator = Correlator(settings=settings.correlate)
    # a story that joined another is told there
    incidents = [
        i for i in correlator.process_many(sorted(alerts, key=lambda a: a.time)) if not i.merged_into
    ]
    incidents.sort(key=lambda i: i.first_seen)
    for inc in incidents:
        if as_json:
            sys.stdout.buffer.write(encode(inc) + b"\n")
        else:
            sys.stdout.write(render_incident(inc) + "\n\n")
    sys.stdout.flush()
    sys.stderr.write(f"{len(alerts)} alert updates, {len(incidents)} stories\n")
    if fail_on:
        threshold = Severity(fail_on).rank
        if any(i.severity.rank >= threshold for i in incidents):
            return 1
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.detect import scan_events

    detect = settings.detect
    detect.rules_dirs = [*detect.rules_dirs, *args.rules_dir]
    detect.disabled_rules = [*detect.disabled_rules, *args.disable]
    cluster = args.cluster or settings.cluster
    events: list[Event] = []
    unreadable = 0
    for path in args.files:
        got, bad = read_events(path, cluster=cluster, errors=sys.stderr)
        events.extend(got)
        unreadable += bad
    if args.stories:
        # what the enrich stage adds that stories need (peer workloads of connections)
        from streams.enrich import Enricher

        enricher = Enricher(cluster=cluster, max_record_bytes=settings.kafka.max_record_bytes)
        events = [enricher.enrich_one(e) for e in sorted(events, key=lambda e: e.time)]
    alerts = scan_events(events, detect)
    if args.stories:
        return _print_stories(alerts, settings, as_json=args.json, fail_on=args.fail_on)
    # dedup re-publishes an open alert as its count grows: keep the last state of each
    latest: dict[str, Alert] = {}
    for a in alerts:
        latest[a.alert_id] = a
    final = sorted(latest.values(), key=lambda a: (a.time, a.rule_id))
    if args.json:
        for a in final:
            sys.stdout.buffer.write(encode(a) + b"\n")
        sys.stdout.flush()
    else:
        _print_text(final, sys.stdout)
        by_rule = Counter(a.rule_id for a in final)
        summary = ", ".join(f"{rule} x{n}" for rule, n in sorted(by_rule.items())) or "none"
        sys.stderr.write(
            f"{len(events)} events from {len(args.files)} file(s), {unreadable} unreadable; "
            f"{len(final)} alerts: {summary}\n"
        )
    if args.fail_on:
        threshold = Severity(args.fail_on).rank
        if any(a.severity.rank >= threshold for a in final):
            return 1
    return 0
