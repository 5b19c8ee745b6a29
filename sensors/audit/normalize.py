"""Normalize one native Kubernetes audit Event (a dict) into a cadr :class:`~schemas.records.Event`.

The result has ``source = k8s_audit``, ``kind = k8s_api``, the :class:`~schemas.records.Audit` block
(who, what verb on which object, from where, with which outcome) and ``audit.request``: the parts of
``requestObject`` that detection needs (see :mod:`sensors.audit.request`), so rules never dig through raw
Kubernetes objects. The workload block names the *target* object (the pod exec'd into, the pod created).

``event_id`` is derived from ``auditID`` + ``stage``: the API server retries a batch it did not get a 2xx
for, and the same id lets every later stage drop the duplicate. Time comes from ``stageTimestamp``
(falling back to ``requestReceivedTimestamp``/``timestamp``); old events are kept as they are.
"""

from __future__ import annotations

import calendar
import hashlib
from typing import Any, Protocol
from urllib.parse import parse_qs

from schemas.records import Audit, Event, EventKind, Source, Workload
from sensors.audit.errors import AuditFormatError
from sensors.audit.request import extract_request, owner_workload

__all__ = ["PodLookup", "actor_workload", "event_id_for", "normalize", "parse_time_ns"]

_MAX_SHORT = 4096
_MAX_PATH = 8192
_MAX_LIST = 1024

# resource -> the Kind a workload block names when the target is a controller object
_WORKLOAD_KINDS = {
    "deployments": "Deployment",
    "daemonsets": "DaemonSet",
    "statefulsets": "StatefulSet",
    "replicasets": "ReplicaSet",
    "jobs": "Job",
    "cronjobs": "CronJob",
}


class PodLookup(Protocol):
    """What the normalizer asks the pod metadata cache (``sensors.k8s``) about a target pod.

    A lookup that also has ``actor_of(user, source_ips) -> Workload | None`` (the pod cache does)
    names the workload that made each call (``audit.actor_workload``)."""

    def by_pod(self, namespace: str, name: str, container: str = "") -> Workload | None: ...


def actor_workload(pods: PodLookup | None, user: str, source_ips: list[str]) -> Workload | None:
    """The workload that made a call, when the lookup can tell (see :class:`PodLookup`)."""
    find = getattr(pods, "actor_of", None)
    return find(user, source_ips) if find is not None and user else None


def _short(value: Any, limit: int = _MAX_SHORT) -> str:
    if type(value) is str and len(value) <= limit:  # the common case, first
        return value
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    return value if len(value) <= limit else value[:limit]


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise AuditFormatError(f"{where}: expected a list of strings, got {type(value).__name__}")
    if len(value) <= 16:
        for v in value:
            if type(v) is not str or len(v) > _MAX_SHORT:
                break
        else:
            return value  # the common case: a few short strings, kept as they are
    return [_short(v) for v in value[:_MAX_LIST]]


_EMPTY: dict[str, Any] = {}


def _dict_or_empty(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if type(value) is dict:
        return value
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise AuditFormatError(f"$.{key}: expected an object, got {type(value).__name__}")
    return value


_SECONDS_CACHE: dict[str, int] = {}


def parse_time_ns(value: Any, where: str = "$.stageTimestamp") -> int:
    """RFC 3339 (``2018-10-26T13:38:34.902914Z``, any fraction length, ``Z`` or ``±hh:mm``) to ns."""
    if not isinstance(value, str) or len(value) < 19 or value[10] not in "Tt ":
        raise AuditFormatError(f"{where}: not an RFC 3339 timestamp: {value!r}")
    head = value[:19]
    seconds = _SECONDS_CACHE.get(head)
    if seconds is None:
        try:
            seconds = calendar.timegm(
                (
                    int(head[0:4]),
                    int(head[5:7]),
                    int(head[8:10]),
                    int(head[11:13]),
                    int(head[14:16]),
                    int(head[17:19]),
                )
            )
        except ValueError as exc:
            raise AuditFormatError(f"{where}: not an RFC 3339 timestamp: {value!r}") from exc
        if len(_SECONDS_CACHE) > 4096:  # bounded: a stream's timestamps share few distinct seconds
            _SECONDS_CACHE.clear()
        _SECONDS_CACHE[head] = seconds
    # fast path: "...:SS.ffffffZ" (what the API server writes)
    if seconds >= 0 and len(value) > 21 and value[19] == "." and value[-1] == "Z":
        digits = value[20:-1]
        if digits.isdigit():
            return seconds * 1_000_000_000 + int((digits + "00000000")[:9])
    pos = 19
    frac_ns = 0
    if pos < len(value) and value[pos] == ".":
        end = pos + 1
        while end < len(value) and value[end].isdigit():
            end += 1
        digits = value[pos + 1 : end][:9]
        if digits:
            frac_ns = int(digits.ljust(9, "0"))
        pos = end
    tz = value[pos:]
    offset = 0
    if tz and tz not in ("Z", "z"):
        if len(tz) != 6 or tz[0] not in "+-" or tz[3] != ":":
            raise AuditFormatError(f"{where}: bad time zone in {value!r}")
        try:
            offset = (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60) * (1 if tz[0] == "+" else -1)
        except ValueError as exc:
            raise AuditFormatError(f"{where}: bad time zone in {value!r}") from exc
    total = (seconds - offset) * 1_000_000_000 + frac_ns
    if total < 0:
        raise AuditFormatError(f"{where}: before 1970: {value!r}")
    return total


def event_id_for(audit_id: str, stage: str) -> str:
    """Stable event id of one audit stage: a retried batch yields the same ids."""
    candidate = f"k8s:{audit_id}:{stage}"
    if len(candidate) <= 128:
        return candidate
    return "k8s:" + hashlib.blake2b(f"{audit_id}\x00{stage}".encode(), digest_size=20).hexdigest()


def _event_time(raw: dict[str, Any]) -> int:
    for key in ("stageTimestamp", "requestReceivedTimestamp", "timestamp"):
        value = raw.get(key)
        if value:
            return parse_time_ns(value, f"$.{key}")
    raise AuditFormatError("$.stageTimestamp: missing (and no requestReceivedTimestamp or timestamp)")


def normalize(
    raw: Any,
    *,
    cluster: str = "",
    node: str = "",
    pods: PodLookup | None = None,
) -> Event:
    """One native audit Event dict -> a cadr Event. Raises :class:`AuditFormatError` naming the field."""
    if not isinstance(raw, dict):
        raise AuditFormatError(f"$: data not recognized as a k8s audit event (a JSON {type(raw).__name__})")
    kind = raw.get("kind", "Event")
    if kind != "Event":
        raise AuditFormatError(
            f'$.kind: data not recognized as a k8s audit event (kind {kind!r}, expected "Event")'
        )
    audit_id = raw.get("auditID")
    if not isinstance(audit_id, str) or not audit_id:
        raise AuditFormatError("$.auditID: missing or not a string")
    stage = raw.get("stage") or "ResponseComplete"
    if not isinstance(stage, str):
        raise AuditFormatError("$.stage: not a string")
    verb = raw.get("verb")
    if not isinstance(verb, str) or not verb:
        raise AuditFormatError("$.verb: missing or not a string")
    time_ns = _event_time(raw)

    user = _dict_or_empty(raw, "user")
    impersonated = _dict_or_empty(raw, "impersonatedUser")
    ref = _dict_or_empty(raw, "objectRef")
    status = _dict_or_empty(raw, "responseStatus")
    annotations = _dict_or_empty(raw, "annotations")
    code = status.get("code", 0)
    if not isinstance(code, int) or isinstance(code, bool):
        raise AuditFormatError("$.responseStatus.code: not an integer")

    resource = _short(ref.get("resource"))
    subresource = _short(ref.get("subresource"))
    namespace = _short(ref.get("namespace"))
    name = _short(ref.get("name"))
    request_uri = _short(raw.get("requestURI"), _MAX_PATH)

    request_obj = raw.get("requestObject")
    response_obj = raw.get("responseObject")
    query = _query(request_uri) if subresource in _QUERY_SUBRESOURCES else {}
    request = extract_request(resource, subresource, request_obj, response_obj, query)
    if not resource:
        # a non-resource URL (/healthz, /version, /apis): rules match the path without the query
        request["path"] = request_uri.partition("?")[0]

    # Pods created from a template have no name until the API server generates it.
    if not name and resource == "pods" and isinstance(response_obj, dict):
        meta = response_obj.get("metadata")
        if isinstance(meta, dict):
            name = _short(meta.get("name"))

    audit = Audit(
        audit_id=_short(audit_id),
        stage=stage[:64],
        level=_short(raw.get("level")),
        verb=verb[:64],
        user=_short(user.get("username")),
        groups=_str_list(user.get("groups"), "$.user.groups"),
        impersonated_user=_short(impersonated.get("username")),
        resource=resource,
        subresource=subresource,
        api_group=_short(ref.get("apiGroup")),
        api_version=_short(ref.get("apiVersion")),
        namespace=namespace,
        name=name,
        request_uri=request_uri,
        source_ips=_str_list(raw.get("sourceIPs"), "$.sourceIPs"),
        user_agent=_short(raw.get("userAgent")),
        response_code=code,
        decision=_short(annotations.get("authorization.k8s.io/decision")),
        reason=_short(annotations.get("authorization.k8s.io/reason"), _MAX_PATH),
        request=request,
    )
    audit.actor_workload = actor_workload(pods, audit.user, audit.source_ips)
    return Event(
        event_id=event_id_for(audit_id, stage),
        time=time_ns,
        node=node,
        source=Source.K8S_AUDIT,
        kind=EventKind.K8S_API,
        workload=_target_workload(cluster, resource, namespace, name, request, request_obj, pods),
        audit=audit,
    )


_QUERY_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy", "log"})


def _query(request_uri: str) -> dict[str, list[str]]:
    _, sep, qs = request_uri.partition("?")
    return parse_qs(qs, keep_blank_values=True, max_num_fields=256) if sep else {}


def _target_workload(
    cluster: str,
    resource: str,
    namespace: str,
    name: str,
    request: dict[str, Any],
    request_obj: Any,
    pods: PodLookup | None,
) -> Workload:
    if resource == "pods" and name:
        container = request.get("container", "")
        known = pods.by_pod(namespace, name, container) if pods is not None else None
        if known is not None:
            # with the container's id, an exec session joins the processes the eBPF sensor sees in it
            return Workload(
                cluster=cluster or known.cluster,
                namespace=namespace,
                pod=name,
                container=container or known.container,
                container_id=known.container_id,
                workload_kind=known.workload_kind,
                workload_name=known.workload_name,
                image=known.image,
                service_account=known.service_account,
                pod_ip=known.pod_ip,
                labels=known.labels,
            )
    if resource == "pods":
        kind, wname = owner_workload(request_obj)
        images = request.get("images") or []
        return Workload(
            cluster=cluster,
            namespace=namespace,
            pod=name,
            container=request.get("container", ""),
            workload_kind=kind,
            workload_name=wname,
            image=images[0] if images else "",
            service_account=request.get("service_account", ""),
            labels=request.get("labels", {}),
        )
    wkind = _WORKLOAD_KINDS.get(resource)
    if wkind is not None:
        return Workload(cluster=cluster, namespace=namespace, workload_kind=wkind, workload_name=name)
    return Workload(cluster=cluster, namespace=namespace)
