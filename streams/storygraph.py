"""The edges of a story's graph, from its timeline (pure; for :mod:`streams.correlate`).

Edges tie timeline nodes: process parent → child (and the file, connection, DNS or privilege step of a
process), an API call → the first processes of the pod it targets (``exec_session``, ``privileged_pod``),
a token read → each later API call by a service account (``token_api``), and a connection into another
workload → the first activity there after it (``lateral``). Linear in the timeline (after sorting) and
bounded, so a busy story costs the same per revision however many alerts it folded.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping

from schemas.records import Edge, EventKind, TimelineEntry

__all__ = ["edges"]

_API = EventKind.K8S_API.value
_STEP_KINDS = {
    EventKind.NET_CONNECT.value: "connection",
    EventKind.FILE_OPEN.value: "file_access",
    EventKind.FILE_LINK.value: "file_access",
    EventKind.DNS_QUERY.value: "dns",
    EventKind.PRIVILEGE_CHANGE.value: "privilege",
}
_NET = frozenset({EventKind.NET_CONNECT.value, EventKind.NET_ACCEPT.value, EventKind.NET_LISTEN.value})
_SESSIONS = ("pods/exec", "pods/attach", "pods/portforward")
#: a session's first process may be seen a little before the API call that started it
_ROOT_SLACK_NS = 5_000_000_000


def _first_at_or_after(times: list[int], entries: list[TimelineEntry], t: int) -> TimelineEntry | None:
    i = bisect.bisect_left(times, t)
    return entries[i] if i < len(entries) else None


def edges(
    timeline: list[TimelineEntry],
    parents: Mapping[str, str],
    node_pods: Mapping[str, str],
    *,
    limit: int = 2000,
) -> list[Edge]:
    """Every edge among ``timeline``'s nodes (at most ``limit``, the earliest kept)."""
    nodes = {t.node_id: t for t in timeline}
    out: list[Edge] = []
    seen: set[Edge] = set()

    def add(src: str, dst: str, kind: str) -> None:
        edge = Edge(src=src, dst=dst, kind=kind)
        if edge not in seen:
            seen.add(edge)
            out.append(edge)

    for node, parent in parents.items():
        if node in nodes and parent in nodes:
            add(parent, node, _STEP_KINDS.get(nodes[node].kind, "parent_child"))
    ordered = sorted(nodes.values(), key=lambda t: (t.time, t.node_id))
    runtime = [t for t in ordered if t.kind != _API]
    # per pod: its runtime nodes without a parent in the story (a session's or a container's roots)
    roots: dict[str, list[TimelineEntry]] = defaultdict(list)
    for t in runtime:
        pod = node_pods.get(t.node_id, "")
        if pod and parents.get(t.node_id) not in nodes:
            roots[pod].append(t)
    root_times = {pod: [t.time for t in entries] for pod, entries in roots.items()}
    latest_token: TimelineEntry | None = None
    for t in ordered:
        if t.kind != _API:
            if t.kind == EventKind.FILE_OPEN.value and "serviceaccount/token" in t.text:
                latest_token = t
            continue
        pod = node_pods.get(t.node_id, "")
        if pod in roots:
            root = _first_at_or_after(root_times[pod], roots[pod], t.time - _ROOT_SLACK_NS)
            if root is not None:
                add(
                    t.node_id,
                    root.node_id,
                    "exec_session" if any(s in t.text for s in _SESSIONS) else "privileged_pod",
                )
        if latest_token is not None and t.text.startswith("system:serviceaccount:"):
            # a service account's call <- the latest token read before it
            add(latest_token.node_id, t.node_id, "token_api")
    # a connection into another workload -> the first activity there after it; an accepted
    # connection from another workload -> the first activity here after it
    by_namespace: dict[str, list[TimelineEntry]] = defaultdict(list)
    by_workload: dict[str, list[TimelineEntry]] = defaultdict(list)
    for t in runtime:
        if t.kind not in _NET:
            by_namespace[t.workload.split("/", 1)[0]].append(t)
            by_workload[t.workload].append(t)
    ns_times = {k: [t.time for t in v] for k, v in by_namespace.items()}
    wl_times = {k: [t.time for t in v] for k, v in by_workload.items()}
    for t in runtime:
        if "(" not in t.text:
            continue
        if t.kind == EventKind.NET_CONNECT.value:
            peer = t.text.rsplit("(", 1)[1].rstrip(")")
            peer_ns = peer.split("/")[1] if peer.count("/") >= 2 else ""
            entries = by_namespace.get(peer_ns, [])
            i = bisect.bisect_left(ns_times.get(peer_ns, []), t.time)
            while i < len(entries) and entries[i].workload == t.workload:
                i += 1
            if i < len(entries):
                add(t.node_id, entries[i].node_id, "lateral")
        elif t.kind == EventKind.NET_ACCEPT.value and t.workload in by_workload:
            after = _first_at_or_after(wl_times[t.workload], by_workload[t.workload], t.time)
            if after is not None:
                add(t.node_id, after.node_id, "lateral")
        if len(out) >= limit:
            break
    return out[:limit]
