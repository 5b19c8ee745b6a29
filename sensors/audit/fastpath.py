"""The webhook's fast path: decode a whole ``EventList`` into typed structs in one msgspec call.

A batch of 400 audit events parsed with ``orjson.loads`` becomes ~100k Python dicts and lists, most of
them inside ``responseObject`` and ``requestObject`` trees the rules never read. Decoding into the
structs below validates types and sizes in C, keeps those two trees as raw bytes (``msgspec.Raw``) and
parses only the ones a rule needs (the request body of pods, roles, bindings ...; the response only to
name a pod created from a ``generateName``). It produces exactly what :func:`sensors.audit.normalize.normalize`
produces (tests/sensors/audit/test_normalize.py checks the whole corpus both ways).

Anything the structs reject (a wrong type, an over-long string, a non-object item) raises
``msgspec.ValidationError`` for the whole body; the caller then falls back to the dict path, which
rejects exactly the bad items with the field named and keeps their siblings. An item that fits the
structs but fails a semantic check (no auditID, a bad timestamp) raises :class:`AuditFormatError`; the
caller falls back the same way, so dead letters always carry the original item.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import orjson
from msgspec import Meta, Struct

from schemas.records import Audit, Event, EventKind, Source
from sensors.audit.errors import AuditFormatError
from sensors.audit.normalize import (
    _QUERY_SUBRESOURCES,
    PodLookup,
    _query,
    _short,
    _target_workload,
    actor_workload,
    event_id_for,
    parse_time_ns,
)
from sensors.audit.request import extract_request

__all__ = ["decode_event_list", "normalize_typed"]

Short = Annotated[str, Meta(max_length=4096)]
Long = Annotated[str, Meta(max_length=8192)]
Strs = Annotated[list[Short], Meta(max_length=1024)]
_NULL = msgspec.Raw(b"null")


class _User(Struct):
    username: Short = ""
    groups: Strs = []


class _Ref(Struct):
    resource: Short = ""
    subresource: Short = ""
    namespace: Short = ""
    name: Short = ""
    apiGroup: Short = ""  # the wire names (camelCase) are the field names
    apiVersion: Short = ""


class _Status(Struct):
    code: int = 0


class _RawEvent(Struct):
    kind: str = "Event"
    auditID: Short = ""
    stage: Annotated[str, Meta(max_length=64)] = ""
    level: Short = ""
    verb: Annotated[str, Meta(max_length=64)] = ""
    user: _User | None = None
    impersonatedUser: _User | None = None
    sourceIPs: Strs = []
    userAgent: Short = ""
    objectRef: _Ref | None = None
    responseStatus: _Status | None = None
    requestURI: Long = ""
    requestObject: msgspec.Raw = _NULL
    responseObject: msgspec.Raw = _NULL
    stageTimestamp: str | None = None
    requestReceivedTimestamp: str | None = None
    timestamp: str | None = None
    annotations: dict[str, Long] = {}


class _EventList(Struct):
    kind: str = ""
    items: list[_RawEvent] = []


class _Named(Struct):
    metadata: dict[str, Any] = {}


_LIST = msgspec.json.Decoder(_EventList)
_NAMED = msgspec.json.Decoder(_Named)


def decode_event_list(body: bytes) -> list[_RawEvent] | None:
    """The items of an EventList body, or None when the body is not an EventList.

    Raises ``msgspec.DecodeError``/``ValidationError`` when the body does not fit the structs.
    """
    doc = _LIST.decode(body)
    return doc.items if doc.kind == "EventList" else None


def normalize_typed(
    raw: _RawEvent, *, cluster: str = "", node: str = "", pods: PodLookup | None = None
) -> Event:
    """Same result as ``normalize(dict)`` for a typed item. Raises :class:`AuditFormatError`."""
    if raw.kind != "Event":
        raise AuditFormatError(
            f'$.kind: data not recognized as a k8s audit event (kind {raw.kind!r}, expected "Event")'
        )
    if not raw.auditID:
        raise AuditFormatError("$.auditID: missing or not a string")
    if not raw.verb:
        raise AuditFormatError("$.verb: missing or not a string")
    stage = raw.stage or "ResponseComplete"
    if raw.stageTimestamp:
        time_ns = parse_time_ns(raw.stageTimestamp, "$.stageTimestamp")
    elif raw.requestReceivedTimestamp:
        time_ns = parse_time_ns(raw.requestReceivedTimestamp, "$.requestReceivedTimestamp")
    elif raw.timestamp:
        time_ns = parse_time_ns(raw.timestamp, "$.timestamp")
    else:
        raise AuditFormatError("$.stageTimestamp: missing (and no requestReceivedTimestamp or timestamp)")
    ref = raw.objectRef or _Ref()
    user = raw.user or _User()
    resource, subresource, name = ref.resource, ref.subresource, ref.name
    request_uri = raw.requestURI
    request_obj = orjson.loads(memoryview(raw.requestObject)) if raw.requestObject != _NULL else None
    query = _query(request_uri) if subresource in _QUERY_SUBRESOURCES else {}
    # the response is only read to name a pod created from a generateName (see normalize)
    response_obj = None
    if resource == "pods" and not name and raw.responseObject != _NULL:
        try:
            response_obj = {"metadata": _NAMED.decode(raw.responseObject).metadata}
        except msgspec.DecodeError:
            response_obj = None  # not an object with metadata: no name to take, as in normalize()
    request = extract_request(resource, subresource, request_obj, response_obj, query)
    if not resource:
        request["path"] = request_uri.partition("?")[0]
    if response_obj is not None:
        name = _short(response_obj["metadata"].get("name"))
    annotations = raw.annotations
    audit = Audit(
        audit_id=raw.auditID,
        stage=stage,
        level=raw.level,
        verb=raw.verb,
        user=user.username,
        groups=user.groups,
        impersonated_user=raw.impersonatedUser.username if raw.impersonatedUser is not None else "",
        resource=resource,
        subresource=subresource,
        api_group=ref.apiGroup,
        api_version=ref.apiVersion,
        namespace=ref.namespace,
        name=name,
        request_uri=request_uri,
        source_ips=raw.sourceIPs,
        user_agent=raw.userAgent,
        response_code=raw.responseStatus.code if raw.responseStatus is not None else 0,
        decision=annotations.get("authorization.k8s.io/decision", "")[:4096],
        reason=annotations.get("authorization.k8s.io/reason", ""),
        request=request,
    )
    audit.actor_workload = actor_workload(pods, audit.user, audit.source_ips)
    return Event(
        event_id=event_id_for(raw.auditID, stage),
        time=time_ns,
        node=node,
        source=Source.K8S_AUDIT,
        kind=EventKind.K8S_API,
        workload=_target_workload(cluster, resource, ref.namespace, name, request, request_obj, pods),
        audit=audit,
    )
