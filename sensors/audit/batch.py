"""One webhook body → events for ``cadr.raw`` and dead letters for ``cadr.dlq``, failing per event.

The common body (an ``EventList`` whose every item is valid) is decoded in one typed pass
(:mod:`sensors.audit.fastpath`). Anything else takes the careful path: the list is cut into its items
without decoding it (:mod:`sensors.audit.framing`, any depth, linear time), and each item is decoded and
normalized on its own. An item that cannot be — nested deeper than :data:`~sensors.audit.framing.MAX_EVENT_DEPTH`,
larger than ``max_event_bytes``, not JSON, not an object, a field of the wrong type — becomes a dead letter
with the reason and its own text; its siblings go through. A body that is no audit document at all is one
dead letter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from schemas.codec import dead_letter, encode
from sensors.audit.envelope import unwrap
from sensors.audit.errors import AuditFormatError
from sensors.audit.fastpath import decode_event_list, normalize_typed
from sensors.audit.framing import MAX_EVENT_DEPTH, depth_over, split_event_list
from sensors.audit.normalize import PodLookup, normalize
from sensors.audit.sink import Record

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "STAGE", "BatchResult", "process_body"]

log = logging.getLogger(__name__)

STAGE = "audit.webhook"
#: the largest audit event accepted (a Kubernetes object is at most ~1.5 MiB in etcd; an event carries two)
DEFAULT_MAX_EVENT_BYTES = 8 << 20


@dataclass
class BatchResult:
    """What one body turned into: records for cadr.raw and cadr.dlq, and the reasons for the DLQ ones."""

    events: list[Record]
    dead: list[Record]
    errors: list[str]
    malformed: bool = False

    def reject(self, stage: str, reason: str, payload: Any) -> None:
        self.errors.append(reason)
        self.dead.append((b"", encode(dead_letter(payload, stage=stage, reason=reason))))


def process_body(
    body: bytes,
    *,
    cluster: str = "",
    node: str = "",
    pods: PodLookup | None = None,
    stage: str = STAGE,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> BatchResult:
    """Parse, validate and normalize one webhook body (pure: no I/O). Never raises on bad input."""
    fast = _fast_path(body, cluster=cluster, node=node, pods=pods, max_event_bytes=max_event_bytes)
    if fast is not None:
        return fast
    result = BatchResult([], [], [])
    items = split_event_list(body)
    if items is None:
        _one_document(body, result, cluster=cluster, node=node, pods=pods, stage=stage)
        return result
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if len(item.raw) > max_event_bytes:
            result.reject(
                stage,
                f"{where}: event of {len(item.raw)} bytes is over the {max_event_bytes}-byte limit",
                item.raw,
            )
        elif item.depth > MAX_EVENT_DEPTH:
            reason = f"{where}: nested {item.depth} levels deep, over the limit of {MAX_EVENT_DEPTH}"
            result.reject(stage, reason, item.raw)
        else:
            try:
                value = orjson.loads(item.raw)
            except orjson.JSONDecodeError as exc:
                result.reject(stage, f"{where}: not JSON: {exc}", item.raw)
                continue
            _normalize_into(
                result, value, where, item.raw, cluster=cluster, node=node, pods=pods, stage=stage
            )
    return result


def _one_document(
    body: bytes, result: BatchResult, *, cluster: str, node: str, pods: PodLookup | None, stage: str
) -> None:
    """A body that is not an EventList: one Event (blocking mode), another envelope, or nothing valid."""
    depth = depth_over(body, MAX_EVENT_DEPTH + 1)  # +1: an envelope around the event
    if depth is not None:
        result.malformed = True
        result.reject(stage, f"body is nested {depth} levels deep, over the limit of {MAX_EVENT_DEPTH}", body)
        return
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        result.malformed = True
        result.reject(stage, f"body is not JSON: {exc}", body)
        return
    try:
        items = unwrap(doc)
    except AuditFormatError as exc:
        result.malformed = True
        result.reject(stage, f"body is not an audit.k8s.io Event or EventList: {exc}", body)
        return
    for index, item in enumerate(items):
        where = "event" if doc is item else f"items[{index}]"
        _normalize_into(result, item, where, item, cluster=cluster, node=node, pods=pods, stage=stage)


def _normalize_into(
    result: BatchResult,
    item: Any,
    where: str,
    payload: Any,
    *,
    cluster: str,
    node: str,
    pods: PodLookup | None,
    stage: str,
) -> None:
    try:
        event = normalize(item, cluster=cluster, node=node, pods=pods)
    except Exception as exc:  # AuditFormatError, or a bug: either way one item must not poison the batch
        if not isinstance(exc, AuditFormatError):
            log.exception("normalizing an audit event failed")
        detail = str(exc) if isinstance(exc, AuditFormatError) else f"cannot normalize: {exc!r}"
        result.reject(stage, f"{where}: {detail}", payload)
        return
    assert event.audit is not None
    result.events.append((event.audit.audit_id.encode(), encode(event)))


def _fast_path(
    body: bytes, *, cluster: str, node: str, pods: PodLookup | None, max_event_bytes: int
) -> BatchResult | None:
    """An EventList whose every item is valid, through the typed decoder; None to take the careful path."""
    try:
        items = decode_event_list(body)
        if items is None:
            return None
        for raw in items:
            request, response = raw.requestObject, raw.responseObject
            if len(request) + len(response) > max_event_bytes:
                return None
            for blob in (request, response):
                # a blob shorter than twice the limit cannot nest deeper than it ({ and } per level)
                if len(blob) > 2 * MAX_EVENT_DEPTH and depth_over(blob, MAX_EVENT_DEPTH - 1) is not None:
                    return None
        events = [normalize_typed(raw, cluster=cluster, node=node, pods=pods) for raw in items]
    except (msgspec.DecodeError, ValueError, RecursionError):
        # AuditFormatError is a ValueError, so is orjson's error; msgspec raises RecursionError past ~1,000
        # levels. The careful path names exactly what is wrong, item by item.
        return None
    return BatchResult(
        [(e.audit.audit_id.encode(), encode(e)) for e in events if e.audit is not None], [], []
    )
