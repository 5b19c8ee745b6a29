"""Retro-hunt benchmark: one rule over N stored events, against a plain ``count()`` with the same filter.

    .venv/bin/python bench/hunt.py                     # 1M events (quick)
    .venv/bin/python bench/hunt.py --events 10000000   # the figure the issue asks for

Steps: generate a synthetic cluster's activity (``tests.streams.forensics.synth``: process trees, opens, connections,
DNS, Kubernetes API calls by people and service accounts, one attack story) and store it in an embedded store
through the store writer's fast path (the worker's store stage, without Kafka); then, for each rule, run
``cadr hunt``'s code (SQL from the condition, rows decoded and re-checked by the rule, alerts folded) ``--runs``
times, and in the same run the baseline: ``SELECT count() FROM events WHERE <the same WHERE clause>``, the
floor of asking ClickHouse for those events at all. Printed: p50 of each and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from streams.forensics.hunt import hunt, plan_hunt
from streams.forensics.reader import StoreReader
from streams.rules import load_rules
from streams.store.client import open_client
from streams.store.sink import StoreWriter
from tests.streams.forensics.synth import ClusterModel, generate

#: an eBPF rule the attack story fires once, and an audit rule people fire often (reads of secrets)
DEFAULT_RULES = ["CADR-PROC-0001", "CADR-K8S-0012", "CADR-K8S-0029"]
UNTIL = 2**62


def fill(dsn: str, n: int, batch: int) -> float:
    started = time.monotonic()
    records: list[bytes] = []
    with StoreWriter(dsn) as writer:
        writer.open()
        for _, value in generate(n, ClusterModel(), attack_at=0.5):
            records.append(value)
            if len(records) == batch:
                writer.write_events(records)
                records = []
        if records:
            writer.write_events(records)
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events to store (default: 1,000,000)")
    ap.add_argument(
        "--rule", action="append", default=[], help=f"rule id, repeatable (default: {DEFAULT_RULES})"
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs per rule (default: 5)")
    ap.add_argument("--batch", type=int, default=50_000, help="events per insert (default: 50,000)")
    ap.add_argument("--keep", action="store_true", help="keep the store directory (default: removed)")
    args = ap.parse_args()
    rules = load_rules(experimental=True)
    workdir = Path(tempfile.mkdtemp(prefix="cadr-bench-hunt-"))
    dsn = f"chdb://{workdir / 'store'}"
    try:
        seconds = fill(dsn, args.events, args.batch)
        print(
            f"stored {args.events:,} events in {seconds:.1f}s ({args.events / seconds:,.0f} ev/s)", flush=True
        )
        reader = StoreReader(open_client(dsn, readonly=True), "cadr", route="bench")
        total = reader.rows("SELECT count() FROM cadr.events")[0][0]
        print(f"events table: {total:,} rows\n")
        print(
            f"{'rule':<15} {'SQL':<8} {'hits':>8} {'alerts':>7} {'hunt p50':>10} {'count() p50':>12} {'ratio':>7}"
        )
        for rule_id in args.rule or DEFAULT_RULES:
            rule = rules.get(rule_id)
            plan = plan_hunt(rules, rule)
            params = {"since": 0, "until": UNTIL}
            count_sql = f"SELECT count() FROM cadr.events WHERE {plan.where}"
            hunt_times, count_times = [], []
            result = None
            for _ in range(args.runs):
                t0 = time.monotonic()
                result = hunt(reader, rules, rule, 0, UNTIL)
                hunt_times.append(time.monotonic() - t0)
                t0 = time.monotonic()
                counted = reader.rows(count_sql, params)[0][0]
                count_times.append(time.monotonic() - t0)
            assert result is not None
            h, c = statistics.median(hunt_times), statistics.median(count_times)
            kind = "exact" if plan.condition.exact else "superset"
            print(
                f"{rule_id:<15} {kind:<8} {result.matched:>8,} {len(result.alerts):>7,} {h * 1000:>8.0f}ms "
                f"{c * 1000:>10.0f}ms {h / c:>6.1f}x   (SQL selected {result.selected:,}, count() {counted:,})",
                flush=True,
            )
        reader.close()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"store kept in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
