"""Find the events of a webhook body without decoding it: item boundaries and nesting depth, at any depth.

The decoders stop at a nesting depth (msgspec at Python's recursion limit, about 1,000 levels; orjson at 1,024),
and fail for the *whole* document: one ``requestObject`` nested 1,000 deep used to cost its valid siblings
their place in the batch. When the one-pass decode of a body fails, the webhook splits the ``EventList`` here,
with no recursion and in linear time (a regular expression with possessive quantifiers finds the strings, so
brackets inside strings do not count), and then decodes each event on its own.

:data:`MAX_EVENT_DEPTH` is the deepest an event may nest; real audit events, CRD schemas included, stay far
below it. :func:`depth_over` measures a blob; :func:`split_event_list` cuts an ``EventList`` into its items.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

__all__ = ["MAX_EVENT_DEPTH", "Item", "depth_over", "split_event_list"]

#: the deepest nesting of objects and arrays an audit event may have (the event object itself is level 1)
MAX_EVENT_DEPTH = 256

# A JSON string, or what is left of one that never closes (it runs to the end: no rescanning, so linear).
_STRING = rb'"[^"\\]*+(?:\\(?:.|\Z)[^"\\]*+)*+(?:"|\Z)'
_STRINGS = re.compile(_STRING, re.DOTALL)
_TOKENS = re.compile(_STRING + rb"|[\[\]{},:]", re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# +1 for an opening bracket, -1 for a closing one (indexed by byte value)
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def depth_over(blob: bytes | memoryview, limit: int = MAX_EVENT_DEPTH) -> int | None:
    """How deep objects and arrays nest in the JSON text ``blob`` when that is deeper than ``limit``, else
    None; linear, no recursion, and nearly free for the common blob (the depth is at most the number of
    opening brackets, counted in C)."""
    data = bytes(blob)
    if data.count(b"{") + data.count(b"[") <= limit:
        return None
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
    return depth if depth > limit else None


@dataclass(frozen=True)
class Item:
    """One element of an ``EventList``'s ``items``: its bytes and how deep it nests."""

    raw: bytes
    depth: int


def split_event_list(body: bytes) -> list[Item] | None:
    """The items of ``body`` when it is a JSON object with ``"kind": "EventList"``; None for anything else.

    Works on text no decoder accepts (too deep, a bad item in the middle): the items come back as bytes for
    the caller to decode one by one. A body that is not one complete JSON object (cut short, or with text
    after it) gives None: the caller refuses it as a whole.
    """
    depth = 0
    kind = None
    key = None  # the key of the member being read at depth 1
    last_string = b""
    in_items = False
    start = 0
    item_depth = 0
    items: list[Item] = []
    first = True
    for match in _TOKENS.finditer(body):
        token = match.group()
        lead = token[0]
        if first:
            if lead != 0x7B:  # "{"
                return None
            first = False
        elif depth == 0:
            return None  # something after the document: not one JSON object
        if lead == 0x22:  # '"'
            last_string = token
            if depth == 1 and key == b'"kind"':
                kind = token
            continue
        if lead in (0x7B, 0x5B):  # { [
            depth += 1
            if in_items:
                item_depth = max(item_depth, depth - 2)
            elif depth == 2 and lead == 0x5B and key == b'"items"':
                in_items, start, item_depth = True, match.end(), 0
        elif lead in (0x7D, 0x5D):  # } ]
            if in_items and depth == 2:
                _add(items, body[start : match.start()], item_depth)
                in_items = False
            depth -= 1
        elif lead == 0x2C:  # ,
            if in_items and depth == 2:
                _add(items, body[start : match.start()], item_depth)
                start, item_depth = match.end(), 0
            elif depth == 1:
                key = None
        elif lead == 0x3A and depth == 1:  # :
            key = last_string
    if depth != 0 or first:
        return None  # cut short (or empty): the caller refuses the body as a whole
    return items if kind == b'"EventList"' else None


def _add(items: list[Item], raw: bytes, depth: int) -> None:
    raw = raw.strip()
    if raw:
        items.append(Item(raw, depth))
