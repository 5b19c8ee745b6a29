"""Issue 13, finding 4: learned and rule patterns match in linear time, and mean what they meant.

Before: a profile's wildcard patterns were one backtracking regular expression; a crafted 160-character path took
~30 s (the time grows like n^k with k stars), inside the worker's event loop. The liveness checks below use a
4,096-character value and patterns with up to 12 stars — billions of years for the old matcher, microseconds for
the linear one (bench/patterns.py prints the figures); a deadline of 60 s only stops a regression from hanging
the suite. The property tests check that the new matcher gives exactly the old answers: the baseline's
``*``-only patterns against the old regular-expression translation, rule globs against :mod:`fnmatch`.
"""

from __future__ import annotations

import fnmatch
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.glob import Glob, glob_match
from streams.baseline.patterns import Patterns
from streams.rules.condition import Compiler
from streams.rules.functions import FUNCTIONS
from tests.streams.store.support import event

N = 4096


@contextmanager
def _must_finish(seconds: int = 60) -> Iterator[None]:
    def hung(*_: object) -> None:
        raise AssertionError(f"matching did not finish within {seconds} s: it backtracks")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_crafted_path_against_learned_patterns_finishes() -> None:
    value = "/" + "a" * (N - 1)
    profile = Patterns(["/*a*a*a*a*a*a*a*a*a*a*a*b", "/proc/*/status", "/x*"])
    with _must_finish():
        assert not profile.match(value)
        assert profile.match("/proc/1/status") and profile.match("/xyz")
        assert Patterns(["/*a*a*a*a*a*a*a*a*a*a*a*b"]).match("/" + "a" * (N - 2) + "b")


def test_a_crafted_argument_shape_finishes() -> None:
    shapes = Patterns(["-c " + "* x " * 11 + "* y"])
    with _must_finish():
        assert not shapes.match("-c " + "x " * (N // 2))


def test_a_crafted_value_against_a_rule_glob_finishes() -> None:
    compiler = Compiler({}, {}, FUNCTIONS)
    condition = compiler.compile('process.cmdline glob "*a*a*a*a*a*a*a*a*a*a*a*[bc]"')

    shell = event("crafted", kind="process_exec")
    assert shell.process is not None
    shell.process.args = ["sh", "a" * N]

    with _must_finish():
        assert not condition(SimpleNamespace(event=shell))
        shell.process.args = ["sh", "a" * N + "c"]
        assert condition(SimpleNamespace(event=shell))
        assert not glob_match("a" * N, "*" + "?" * 40 + "b*")
        assert not glob_match("A" * N, "*a?" * 20 + "b*", syntax="sigma", casefold=True)
        assert glob_match("a" * N + "b", "*a*a*a*a*a*a*a*a*a*a*a*[bc]")


def _old_baseline(patterns: list[str]) -> Callable[[str], bool]:
    regex = re.compile("|".join("(?:" + re.escape(p).replace(r"\*", ".*") + ")" for p in patterns), re.DOTALL)
    return lambda value: regex.fullmatch(value) is not None


short_text = st.text(alphabet="ab*?[]!-/.\n", max_size=10)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(alphabet="ab*?[/\n", max_size=8), min_size=1, max_size=4),
    st.text(alphabet="ab?[/*\n", max_size=10),
)
def test_profile_patterns_mean_what_they_meant(patterns: list[str], value: str) -> None:
    wild = [p for p in patterns if "*" in p]
    expected = value in patterns or (bool(wild) and _old_baseline(wild)(value))
    assert Patterns(patterns).match(value) == expected
    for p in patterns:
        assert Glob(p, syntax="stars").match(value) == _old_baseline([p])(value)


@settings(max_examples=1000, deadline=None)
@given(short_text, short_text)
def test_rule_globs_mean_what_fnmatch_means(pattern: str, value: str) -> None:
    assert glob_match(value, pattern) == fnmatch.fnmatchcase(value, pattern)
