"""Link keys: how an alert can join a story, and what it offers later alerts (for :mod:`streams.correlate`).

A link is an index entry ``key → (incident, thread, first and latest use)``. :func:`probes` are the keys
under which an existing story could claim an alert; :func:`registrations` the keys an alert makes
available. Keys:

- ``exec:<exec_id>``            a process (and, through ancestry, its tree)            process_tree
- ``pod:<cluster>/<ns>/<pod>``  a pod: exec session target, privileged pod, same pod,  exec_session …
                                the pod an API call came from
- ``sa:<cluster>/<ns>:<name>``  a service account whose token was read or used          token_api
- ``ip:<cluster>/<ip>``         the pod IP a token was read in, or an API call came from token_api
- ``wl:<workload key>``         a workload with a story                                 lateral
- ``peer:<workload key>``       a workload an alerting connection reached               lateral
- ``contact:<workload key>``    a workload that connected into a story's workload      lateral
- ``alert:<alert id>``          the alert itself (count updates, redeliveries)
"""

from __future__ import annotations

import msgspec

from schemas.records import Alert, Event, EventKind, Workload
from streams.detect import TOKEN_TAG

__all__ = [
    "Link",
    "actor_pod",
    "contact_source",
    "node_id",
    "pod_key",
    "probes",
    "registrations",
    "target_pod",
]

_SESSION_SUBRESOURCES = {"exec", "attach", "portforward"}
_SA = "system:serviceaccount:"


class Link(msgspec.Struct, kw_only=True):
    """Index entry: this key belongs to that incident through ``thread``, registered first at ``first``
    and last at ``time`` (each alert of the story that registers it again moves ``time`` on)."""

    incident_id: str
    time: int
    thread: str
    node_id: str = ""
    first: int = 0


def node_id(e: Event) -> str:
    """The story graph node an event is (a process, an API call, else the event)."""
    if e.kind is EventKind.PROCESS_EXEC and e.process is not None and e.process.exec_id:
        return e.process.exec_id
    if e.kind is EventKind.K8S_API and e.audit is not None:
        return f"audit:{e.audit.audit_id}"
    return e.event_id


def pod_key(w: Workload) -> str:
    return f"pod:{w.cluster}/{w.namespace}/{w.pod}" if w.pod else ""


def contact_source(c: Event) -> str:
    """The workload a connection into an alert's workload came from (``Alert.contacts``)."""
    n = c.network
    if n is None or not n.peer_workload:
        return ""
    return n.peer_workload if c.kind is EventKind.NET_ACCEPT else c.workload.key()


def actor_pod(e: Event) -> str:
    """The pod an API call came from (``audit.actor_workload``), as a link key."""
    actor = e.audit.actor_workload if e.audit is not None else None
    if actor is None or not actor.pod:
        return ""
    return f"pod:{actor.cluster or e.workload.cluster}/{actor.namespace}/{actor.pod}"


def target_pod(e: Event) -> str:
    """The pod an API call targets, as a link key."""
    a = e.audit
    if a is None or a.resource != "pods" or not a.name:
        return ""
    return f"pod:{e.workload.cluster}/{a.namespace}/{a.name}"


def _api_keys(e: Event, w: Workload) -> list[tuple[str, str]]:
    a = e.audit
    assert a is not None
    keys: list[tuple[str, str]] = []
    target = target_pod(e)
    if target and a.subresource in _SESSION_SUBRESOURCES:
        keys.append((target, "exec_session"))
    elif target and a.verb == "create":
        keys.append((target, "privileged_pod"))
    if a.user.startswith(_SA):
        keys.append((f"sa:{w.cluster}/{a.user.removeprefix(_SA)}", "token_api"))
        keys.extend((f"ip:{w.cluster}/{ip}", "token_api") for ip in a.source_ips)
    actor = actor_pod(e)
    if actor:
        # the call came from a pod: it joins what happens in that pod
        keys.append((actor, "token_api"))
    return keys


def _runtime_keys(alert: Alert, e: Event, *, own: str, other: str) -> list[tuple[str, str]]:
    """The pod, workload, token and connection keys of a runtime alert. Probes and registrations mirror
    each other: a workload's alert probes ``peer:<itself>`` (a connection reached it) and registers
    ``wl:<itself>``; a connection's alert probes ``wl:<its peer>`` and registers ``peer:<its peer>``."""
    w = alert.workload
    keys: list[tuple[str, str]] = []
    if w.pod:
        keys.append((pod_key(w), "same_pod"))
    if not w.is_host:
        keys.append((f"{own}:{w.key()}", "lateral"))
    if TOKEN_TAG in alert.tags:
        # both orders: the API call made with the token may have been seen first (events of
        # different workloads travel on different partitions)
        if w.service_account and w.namespace:
            keys.append((f"sa:{w.cluster}/{w.namespace}:{w.service_account}", "token_api"))
        if w.pod_ip:
            keys.append((f"ip:{w.cluster}/{w.pod_ip}", "token_api"))
    if e.network is not None and e.network.peer_workload:
        keys.append((f"{other}:{e.network.peer_workload}", "lateral"))
    return keys


def probes(alert: Alert) -> list[tuple[str, str]]:
    """(link key, thread) pairs under which an existing story could claim this alert."""
    e = alert.event
    if e is None:
        return []
    keys: list[tuple[str, str]] = []
    for ev in (e, *alert.context):
        p = ev.process
        if p is not None:
            if p.exec_id:
                keys.append((f"exec:{p.exec_id}", "process_tree"))
            if p.parent_exec_id:
                keys.append((f"exec:{p.parent_exec_id}", "process_tree"))
    if e.kind is EventKind.K8S_API and e.audit is not None:
        return keys + _api_keys(e, alert.workload)
    return keys + _runtime_keys(alert, e, own="peer", other="wl")


def registrations(alert: Alert) -> list[tuple[str, str]]:
    """(link key, thread) pairs this alert makes available to later alerts."""
    e = alert.event
    if e is None:
        return []
    keys: list[tuple[str, str]] = [
        (f"exec:{ev.process.exec_id}", "process_tree")
        for ev in (e, *alert.context)
        if ev.process is not None and ev.process.exec_id
    ]
    if e.kind is EventKind.K8S_API and e.audit is not None:
        return keys + _api_keys(e, alert.workload)
    return keys + _runtime_keys(alert, e, own="wl", other="peer")
