"""Recognize the envelope an audit record arrives in and unwrap it to a native audit Event dict.

Kubernetes audit events reach cadr in several wrappings:

- native ``audit.k8s.io`` ``Event`` (v1 or v1beta1; ``apiVersion`` is often absent in files),
- ``EventList`` (what the webhook backend POSTs in batch mode),
- AKS diagnostic logs (``category: kube-audit`` / ``kube-audit-admin``) whose ``properties.log`` holds the
  event either as an object or as a JSON-encoded string,
- GKE Cloud Audit Logs (``protoPayload`` of type ``google.cloud.audit.AuditLog``), which are translated to
  the native shape here so that one normalizer serves every format.

Everything here is pure: dicts in, dicts out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from sensors.audit.errors import AuditFormatError

__all__ = ["Envelope", "detect_envelope", "iter_audit_events", "unwrap"]


class Envelope:
    """Names of the envelopes :func:`detect_envelope` recognizes."""

    NATIVE = "native"
    EVENT_LIST = "event_list"
    AKS = "aks"
    GKE = "gke"


_AKS_CATEGORIES = frozenset({"kube-audit", "kube-audit-admin"})

# google.rpc.Code -> the HTTP status the API server would have answered.
_GRPC_TO_HTTP = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}


def detect_envelope(obj: Any) -> str:
    """Which envelope ``obj`` is in; raises :class:`AuditFormatError` for anything else."""
    if not isinstance(obj, dict):
        raise AuditFormatError(f"$: data not recognized as a k8s audit event (a JSON {type(obj).__name__})")
    kind = obj.get("kind")
    if kind == "EventList":
        return Envelope.EVENT_LIST
    if kind == "Event" or (kind is None and "auditID" in obj):
        return Envelope.NATIVE
    if "protoPayload" in obj:
        return Envelope.GKE
    if obj.get("category") in _AKS_CATEGORIES and isinstance(obj.get("properties"), dict):
        return Envelope.AKS
    if kind is not None:
        raise AuditFormatError(
            f'$.kind: data not recognized as a k8s audit event (kind {kind!r}, expected "Event")'
        )
    raise AuditFormatError("$: data not recognized as a k8s audit event (no kind, auditID or known envelope)")


def unwrap(obj: Any) -> list[Any]:
    """The native audit Event dicts inside one parsed JSON document (an EventList gives many).

    Items of an EventList are returned as they are (not validated), so one bad item can be
    rejected on its own while its siblings go through.
    """
    envelope = detect_envelope(obj)
    if envelope == Envelope.NATIVE:
        return [obj]
    if envelope == Envelope.EVENT_LIST:
        items = obj.get("items")
        if items is None:
            return []
        if not isinstance(items, list):
            raise AuditFormatError(f"$.items: expected a list, got {type(items).__name__}")
        return items
    if envelope == Envelope.AKS:
        log = obj["properties"].get("log")
        if isinstance(log, str):
            try:
                log = orjson.loads(log)
            except orjson.JSONDecodeError as exc:
                raise AuditFormatError(f"$.properties.log: not JSON ({exc})") from exc
        if not isinstance(log, dict):
            raise AuditFormatError("$.properties.log: expected an audit event object")
        return unwrap(log)
    return [_from_gke(obj)]


def iter_audit_events(data: bytes) -> Iterator[tuple[int, Any | AuditFormatError]]:
    """Parse a file's bytes: one JSON document, or JSON lines. Yields ``(line_no, event_or_error)``.

    A line that fails to parse yields the error instead of stopping the file, so a tool can report
    every bad line with its number.
    """
    stripped = data.strip()
    if not stripped:
        return
    # A whole-file document (pretty-printed Event or EventList) parses in one go; JSON lines do not.
    try:
        doc = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        doc = _NOT_ONE_DOC
    if doc is not _NOT_ONE_DOC:
        try:
            for item in unwrap(doc):
                yield 1, item
        except AuditFormatError as exc:
            yield 1, exc
        return
    for line_no, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            for item in unwrap(orjson.loads(line)):
                yield line_no, item
        except orjson.JSONDecodeError as exc:
            yield line_no, AuditFormatError(f"line {line_no}: invalid JSON ({exc})")
        except AuditFormatError as exc:
            yield line_no, AuditFormatError(f"line {line_no}: {exc}")


_NOT_ONE_DOC = object()


def _from_gke(obj: dict[str, Any]) -> dict[str, Any]:
    """Translate a GKE Cloud Audit Log entry into the native audit Event shape."""
    proto = obj.get("protoPayload")
    if not isinstance(proto, dict):
        raise AuditFormatError("$.protoPayload: expected an object")
    method = proto.get("methodName")
    if not isinstance(method, str) or not method:
        raise AuditFormatError("$.protoPayload.methodName: missing")
    # io.k8s.core.v1.pods.exec.create, io.k8s.apps.v1.deployments.update, io.k8s.get (non-resource)
    verb = method.rsplit(".", 1)[-1]
    auth = proto.get("authenticationInfo") or {}
    meta = proto.get("requestMetadata") or {}
    labels = obj.get("labels") or {}
    status = proto.get("status") or {}
    code = status.get("code", 0) if isinstance(status, dict) else 0
    object_ref, request_uri = _gke_object_ref(proto.get("resourceName") or "")
    decision = labels.get("authorization.k8s.io/decision", "")
    if not decision:
        infos = proto.get("authorizationInfo") or []
        if infos and isinstance(infos, list) and isinstance(infos[0], dict):
            decision = "allow" if all(i.get("granted") for i in infos if isinstance(i, dict)) else "forbid"
    operation = obj.get("operation") or {}
    audit_id = obj.get("insertId") or (operation.get("id") if isinstance(operation, dict) else "") or ""
    native: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse"
        if proto.get("response")
        else ("Request" if proto.get("request") else "Metadata"),
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": request_uri,
        "verb": verb,
        "user": {"username": auth.get("principalEmail", "") if isinstance(auth, dict) else "", "groups": []},
        "sourceIPs": [meta["callerIp"]] if isinstance(meta, dict) and meta.get("callerIp") else [],
        "userAgent": meta.get("callerSuppliedUserAgent", "") if isinstance(meta, dict) else "",
        "responseStatus": {"code": _GRPC_TO_HTTP.get(code, 500) if isinstance(code, int) else 500},
        "requestReceivedTimestamp": obj.get("timestamp") or obj.get("receiveTimestamp"),
        "stageTimestamp": obj.get("timestamp") or obj.get("receiveTimestamp"),
        "annotations": {
            "authorization.k8s.io/decision": decision,
            "authorization.k8s.io/reason": labels.get("authorization.k8s.io/reason", ""),
        },
    }
    if object_ref:
        native["objectRef"] = object_ref
    if isinstance(proto.get("request"), dict):
        native["requestObject"] = proto["request"]
    if isinstance(proto.get("response"), dict):
        native["responseObject"] = proto["response"]
    return native


def _gke_object_ref(resource_name: str) -> tuple[dict[str, str], str]:
    """``core/v1/namespaces/default/pods/web-1/exec`` -> objectRef and the request URI it stands for."""
    parts = [p for p in resource_name.split("/") if p]
    # Non-resource requests (readyz, healthz, version) name only the path.
    if len(parts) < 3:
        return {}, "/" + resource_name.lstrip("/")
    group, version, rest = parts[0], parts[1], parts[2:]
    ref: dict[str, str] = {"apiGroup": "" if group == "core" else group, "apiVersion": version}
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        ref["namespace"] = rest[1]
        rest = rest[2:]
    if rest:
        ref["resource"] = rest[0]
    if len(rest) >= 2:
        ref["name"] = rest[1]
    if len(rest) >= 3:
        ref["subresource"] = rest[2]
    prefix = "/api/" + version if group == "core" else f"/apis/{group}/{version}"
    return ref, prefix + "/" + "/".join(parts[2:])
