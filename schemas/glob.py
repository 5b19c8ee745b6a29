"""Glob matching in linear time, for every pattern cadr matches values against.

Profiles remember values as patterns (``/proc/*/status``, ``-p *``), learned from what workloads do and
imported from files; rules compare fields with ``glob`` and ``text.glob_any``. A value is attacker-chosen (a
path, an argv), and so, through learning, is the pattern. Compiling globs into backtracking regular expressions
made the time grow like n^k with k stars: one crafted 160-character path took ~30 s to match inside the worker.

:class:`Glob` matches without backtracking. A pattern is cut at its stars into segments of fixed length; the
first must match at the start, the last at the end, and each one between at its leftmost place after the one
before (for fixed-length pieces between stars, the leftmost choice is always right, so nothing is ever
retried). Each segment is found with ``str.find`` (a literal) or one pass of a quantifier-free regular
expression (``?`` and ``[...]`` classes): time O(len(value) x segments) at worst, with no input that takes
longer. Three syntaxes:

- ``"stars"`` (profiles): ``*`` is the only wildcard; ``?`` and ``[`` are ordinary characters, as in the file
  names they come from;
- ``"fnmatch"`` (the default; rules' ``glob`` and ``text.glob_*``, forward filters): ``*``, ``?``, ``[seq]``,
  ``[!seq]``, with :mod:`fnmatch`'s meaning;
- ``"sigma"`` (Sigma rules' wildcards, ``text.match_any``): ``*``, ``?`` and ``\\`` making the next character
  literal (a trailing ``\\`` is itself literal).

``casefold=True`` compares lower-cased pattern and value (Sigma's default).
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache

__all__ = ["Glob", "compile_glob", "glob_match"]


class _Segment:
    """A piece of a pattern between stars: a literal, or a fixed-length regular expression."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, tokens: list[tuple[bool, str]]) -> None:
        self.length = len(tokens)
        if all(literal for literal, _ in tokens):
            self.literal: str | None = "".join(text for _, text in tokens)
            self.regex: re.Pattern[str] | None = None
        else:
            self.literal = None
            # one character per token and no quantifier: literals escaped, "?" and classes as fnmatch means them
            parts = [re.escape(text) if literal else _class(text) for literal, text in tokens]
            self.regex = re.compile("".join(parts), re.DOTALL)

    def at(self, value: str, pos: int) -> bool:
        """Whether the segment matches ``value`` at ``pos`` exactly."""
        if self.literal is not None:
            return value.startswith(self.literal, pos)
        assert self.regex is not None
        return self.regex.match(value, pos, pos + self.length) is not None

    def find(self, value: str, start: int, end: int) -> int:
        """The leftmost position >= ``start`` where the segment matches within ``value[:end]``, or -1."""
        if self.literal is not None:
            return value.find(self.literal, start, end)
        assert self.regex is not None
        found = self.regex.search(value, start, end)
        return -1 if found is None else found.start()


def _class(token: str) -> str:
    """The regular expression of a ``?`` or ``[...]`` token: fnmatch's own translation of it alone."""
    return "." if token == "?" else fnmatch.translate(token).removeprefix("(?s:").removesuffix(r")\Z")


def _sigma_tokens(pattern: str) -> list[tuple[bool, str] | None]:
    out: list[tuple[bool, str] | None] = []
    escaped = False
    for c in pattern:
        if escaped:
            out.append((True, c))
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "*":
            out.append(None)
        else:
            out.append((False, "?") if c == "?" else (True, c))
    if escaped:
        out.append((True, "\\"))
    return out


def _tokens(pattern: str, syntax: str) -> list[tuple[bool, str] | None]:
    """The pattern as tokens: None for ``*``, else (is it a literal character, its text), one per character
    it matches (a character, ``?``, a class)."""
    if syntax == "stars":
        return [None if c == "*" else (True, c) for c in pattern]
    if syntax == "sigma":
        return _sigma_tokens(pattern)
    if syntax != "fnmatch":
        raise ValueError(f"unknown glob syntax {syntax!r} (fnmatch, stars or sigma)")
    out: list[tuple[bool, str] | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(None)
        elif c == "?":
            out.append((False, "?"))
        elif c == "[":
            # fnmatch's rule: "[!" negates, a "]" first is literal, an unclosed "[" is a plain character
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append((True, "["))
            else:
                out.append((False, pattern[i - 1 : j + 1]))
                i = j + 1
        else:
            out.append((True, c))
    return out


class Glob:
    """One compiled pattern; :meth:`match` is true when the whole value matches it."""

    __slots__ = ("_first", "_last", "_middle", "_minimum", "_stars", "casefold", "pattern")

    def __init__(self, pattern: str, *, syntax: str = "fnmatch", casefold: bool = False) -> None:
        self.pattern = pattern
        self.casefold = casefold
        pieces: list[list[tuple[bool, str]]] = [[]]
        for token in _tokens(pattern.lower() if casefold else pattern, syntax):
            if token is None:
                if pieces[-1] or len(pieces) == 1:
                    pieces.append([])
                continue
            pieces[-1].append(token)
        segments = [_Segment(p) for p in pieces]
        self._stars = len(segments) > 1
        self._first = segments[0]
        self._last = segments[-1]
        self._middle = segments[1:-1]
        self._minimum = sum(s.length for s in segments)

    def match(self, value: str) -> bool:
        if self.casefold:
            value = value.lower()
        first, last = self._first, self._last
        if not self._stars:
            return len(value) == first.length and first.at(value, 0)
        if len(value) < self._minimum or not first.at(value, 0):
            return False
        end = len(value) - last.length
        if not last.at(value, end):
            return False
        pos = first.length
        for segment in self._middle:
            found = segment.find(value, pos, end)
            if found < 0:
                return False
            pos = found + segment.length
        return True

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, syntax: str = "fnmatch", casefold: bool = False) -> Glob:
    """A cached :class:`Glob` (rules compare with the same few patterns again and again)."""
    return Glob(pattern, syntax=syntax, casefold=casefold)


def glob_match(value: str, pattern: str, *, syntax: str = "fnmatch", casefold: bool = False) -> bool:
    """Whether ``value`` matches ``pattern`` (default: :func:`fnmatch.fnmatchcase` semantics), in linear time."""
    return compile_glob(pattern, syntax, casefold).match(value)
