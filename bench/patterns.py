"""Pattern-matching benchmark: the worst inputs we can craft for the linear-time globs (schemas/glob.py) that
match learned profile patterns (streams/baseline/patterns.py) and rule globs, against a plain equality check of
strings of the same length (the floor), measured in the same run.

    .venv/bin/python bench/patterns.py                # 4,096-character inputs (the goal: every case < 1 ms)
    .venv/bin/python bench/patterns.py --length 1024

Each case is a pattern (or a profile's set of patterns) and a value built to make a matcher work hardest: the
pattern's first and last pieces match, so every piece between is searched, and the match fails only at the
end. For contrast, the regular-expression translation the baseline used before (one alternation of ``.*``
globs, backtracking) is timed on the same kind of input at a few short lengths only — its time grows like n^k
with k stars (160 characters took ~30 s).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

from schemas.glob import Glob, glob_match
from streams.baseline.patterns import Patterns


def _per_call_us(fn: Callable[[], object], runs: int) -> float:
    """Median time of one call, in microseconds (calls batched so the clock's resolution does not matter)."""
    batch = 1
    while True:
        started = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - started > 0.002 or batch >= 1 << 16:
            break
        batch *= 4
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(samples)


def _old_regex(patterns: list[str]) -> re.Pattern[str]:
    """The baseline's matcher before: every wildcard pattern as ``.*`` in one backtracking alternation."""
    return re.compile("|".join("(?:" + re.escape(p).replace(r"\*", ".*") + ")" for p in patterns), re.DOTALL)


def cases(n: int) -> list[tuple[str, Callable[[], bool]]]:
    """(name, matcher call) for values of length ``n``; patterns compiled once, as the worker holds them."""
    value_a = "/" + "a" * (n - 2) + "z"
    stars8 = Glob("/" + "*a" * 8 + "*c*z", syntax="stars")  # eight stars that all find an "a", then no "c"
    # a profile's whole file set, every pattern passing the cheap prefix and suffix checks: 256 full scans
    hostile_set = Patterns(["/" + "*a" * (i % 8 + 1) + f"*c{i}*z" for i in range(256)])
    learned_set = Patterns([f"/{i:03d}*a*a*a*a*a*a*c*z" for i in range(255)] + [stars8.pattern])
    arg_value = ("-x " + "a " * n)[:n]
    arg_glob = Glob("-x " + "* a " * 6 + "* c *", syntax="stars")
    cls_value = "a" * n
    cls_pattern = "*" + "[ab]" * 24 + "c*"  # a rule glob: fixed-length classes searched at every position
    q_pattern = "*" + "?" * 64 + "c*"
    return [
        ("profile path pattern, 8 stars", lambda: stars8.match(value_a)),
        ("argument shape pattern, 7 stars", lambda: arg_glob.match(arg_value)),
        ("rule glob, 24 character classes", lambda: glob_match(cls_value, cls_pattern)),
        ("rule glob, 64 '?'", lambda: glob_match(cls_value, q_pattern)),
        ("Sigma wildcard, 64 '?', case-folded", lambda: glob_match(cls_value, q_pattern, syntax="sigma", casefold=True)),
        ("profile set of 256 learned patterns", lambda: learned_set._globs[-1].match(value_a) or any(g.match(value_a) for g in learned_set._globs)),
        ("profile set of 256 hostile patterns (per set)", lambda: any(g.match(value_a) for g in hostile_set._globs)),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=4096, help="characters per value (default: 4096)")
    parser.add_argument("--runs", type=int, default=15, help="timed samples per case (default: 15)")
    args = parser.parse_args()
    n = args.length
    other = "/" + "a" * (n - 2) + "y"
    value = "/" + "a" * (n - 2) + "z"
    floor = _per_call_us(lambda: value == other, args.runs)
    print(f"pattern matching, worst crafted inputs of {n:,} characters ({args.runs} samples each):")
    print(f"  baseline: plain equality of two {n:,}-character strings   {floor:10.2f} us")
    worst = 0.0
    for name, call in cases(n):
        us = _per_call_us(call, args.runs)
        if "per set" not in name:
            worst = max(worst, us)
        print(f"  {name:<46} {us:10.2f} us   {us / floor:8.1f}x equality")
    print(
        f"slowest single pattern {worst / 1000:.3f} ms  goal < 1 ms: {'MET' if worst < 1000 else 'NOT MET'}"
    )
    print("before (backtracking regex of the old baseline matcher, same kind of input; short lengths only):")
    stars = "/" + "*a" * 5 + "*b"
    for length in (40, 60, 80, 100):
        short = "/" + "a" * length
        old = _old_regex([stars, "/x*"])
        started = time.perf_counter()
        old.fullmatch(short)
        old_ms = (time.perf_counter() - started) * 1000
        new_us = _per_call_us(lambda short=short: Patterns([stars, "/x*"]).match(short), 5)
        print(f"  {length + 1:>4} characters: regex {old_ms:10.1f} ms   linear glob {new_us:8.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
