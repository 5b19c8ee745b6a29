"""Build :class:`~schemas.records.DeadLetter` records for rejected audit input.

The payload is kept so an operator can see exactly what was refused, but bounded: a hostile
32 MiB body must not become a 32 MiB DLQ record. Bytes that are not UTF-8 are base64-encoded
(``payload_b64``) instead of being mangled.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from schemas.records import DeadLetter

__all__ = ["MAX_DLQ_PAYLOAD", "dead_letter"]

#: the largest payload a dead letter keeps (the rest is cut, and the reason says so)
MAX_DLQ_PAYLOAD = 64 << 10


def dead_letter(
    stage: str,
    reason: str,
    payload: bytes | str | Any,
    *,
    time_ns: int | None = None,
    topic: str = "",
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    """A dead letter for ``payload`` (raw bytes, text, or an already-parsed JSON value)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
    elif isinstance(payload, str):
        raw = payload.encode("utf-8", "surrogatepass")
    else:
        try:
            raw = orjson.dumps(payload)
        except TypeError:
            raw = repr(payload).encode()
    truncated = len(raw) > MAX_DLQ_PAYLOAD
    cut = raw[:MAX_DLQ_PAYLOAD]
    text = _utf8(cut, truncated)
    b64 = text is None
    if text is None:
        text = base64.b64encode(cut).decode("ascii")
    if truncated:
        reason = f"{reason} (payload cut to the first {MAX_DLQ_PAYLOAD} of {len(raw)} bytes)"
    return DeadLetter(
        time=time.time_ns() if time_ns is None else time_ns,
        stage=stage,
        reason=reason[:8192],
        topic=topic,
        partition=partition,
        offset=offset,
        payload=text,
        payload_b64=b64,
        payload_bytes=len(raw),
    )


def _utf8(data: bytes, truncated: bool) -> str | None:
    """``data`` as text, or None when it is not UTF-8. A cut may split the last character: retry
    without up to three trailing bytes before giving up."""
    for trim in range(4 if truncated else 1):
        try:
            return data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
