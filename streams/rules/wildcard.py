"""Wildcard patterns matched in linear time, without regular expressions built from the pattern.

A pattern is text where ``*`` matches any run of characters, ``?`` exactly one, and ``\\`` makes the next
character literal (the wildcards of Sigma rules). The pattern is cut at its unescaped stars into
segments: the first must match at the start of the text, the last at its end, and each one between at
its leftmost place after the previous one. Leftmost placement is always right for star-separated
segments, so no choice is ever revisited: each segment is searched once (``str.find`` when it has no
``?``), and a hostile text or pattern costs at most ``len(text) * len(segment)`` per segment, never
the exponential backtracking of a regex engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ANY_ONE", "WildcardPattern", "compile_wildcard", "wildcard_match"]

#: a ``?`` in a segment
ANY_ONE = None

Segment = tuple[str | None, ...]


@dataclass(frozen=True)
class WildcardPattern:
    """A parsed pattern: segments between stars; ``starred`` is false for a pattern without stars."""

    segments: tuple[Segment, ...]
    starred: bool
    casefold: bool

    def match(self, text: str) -> bool:
        if self.casefold:
            text = text.lower()
        segs = self.segments
        if not self.starred:
            return len(segs[0]) == len(text) and _at(segs[0], text, 0)
        first, last = segs[0], segs[-1]
        if len(first) + len(last) > len(text):
            return False
        if not _at(first, text, 0) or not _at(last, text, len(text) - len(last)):
            return False
        pos, end = len(first), len(text) - len(last)
        for seg in segs[1:-1]:
            found = _find(seg, text, pos, end)
            if found < 0:
                return False
            pos = found + len(seg)
        return True


def _at(seg: Segment, text: str, pos: int) -> bool:
    """``seg`` matches ``text`` at ``pos`` (the caller checked the length fits)."""
    return all(ch is ANY_ONE or text[pos + i] == ch for i, ch in enumerate(seg))


def _find(seg: Segment, text: str, start: int, end: int) -> int:
    """Leftmost position in ``[start, end - len(seg)]`` where ``seg`` matches, or -1."""
    if ANY_ONE not in seg:
        return text.find("".join(seg), start, end)  # type: ignore[arg-type]
    for pos in range(start, end - len(seg) + 1):
        if _at(seg, text, pos):
            return pos
    return -1


@lru_cache(maxsize=4096)
def compile_wildcard(pattern: str, casefold: bool = False) -> WildcardPattern:
    """Parse ``pattern`` once (cached); ``casefold`` compares both sides lower-cased."""
    segments: list[Segment] = []
    current: list[str | None] = []
    starred = False
    escaped = False
    for ch in pattern:
        if escaped:
            current.append(ch.lower() if casefold else ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "*":
            segments.append(tuple(current))
            current = []
            starred = True
        elif ch == "?":
            current.append(ANY_ONE)
        else:
            current.append(ch.lower() if casefold else ch)
    if escaped:
        current.append("\\")
    segments.append(tuple(current))
    return WildcardPattern(tuple(segments), starred, casefold)


def wildcard_match(text: str, pattern: str, casefold: bool = False) -> bool:
    """Whether ``text`` matches ``pattern`` (see the module docstring)."""
    return compile_wildcard(pattern, casefold).match(text)
