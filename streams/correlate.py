"""Stage 3 — correlate: ``cadr.alerts`` → ``cadr.incidents`` (stories).

Alerts join one story when they share a *thread*:

- ``process_tree``   the same process tree (an alert's exec_id or any ancestor's),
- ``exec_session``   a ``kubectl exec``/attach into a pod and the processes in that pod,
- ``token_api``      a service-account token read in a pod and API calls by that service
                     account (from the pod's IP),
- ``lateral``        a connection from workload A to workload B and then activity in B: the connection
                     an alert (``network.peer_workload``), or one of the alert's ``contacts`` (detect
                     gives each alert the recent connections into its workload) while A has a story,
- ``privileged_pod`` a privileged pod created through the API and activity inside it,
- ``same_pod``       other alerts of the same pod close in time.

Links are index entries ``key → (incident, time, thread)`` valid for ``link_window``; links
work in both orders (audit events often arrive after the runtime events they caused).
Every change to a story is a new revision of the incident record. Pure logic; the Faust
agent in :func:`register` keeps the state in tables.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from schemas.records import (
    Alert,
    AlertRef,
    Edge,
    Event,
    EventKind,
    Incident,
    IncidentStatus,
    Severity,
    TimelineEntry,
    Workload,
)
from schemas.settings import CorrelateSettings
from streams import story
from streams.detect import TOKEN_TAG

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = ["Correlator", "Link", "StoryState", "register"]

log = logging.getLogger(__name__)

_MAX_TIMELINE = 300
_MAX_ALERTS = 1000
_SESSION_SUBRESOURCES = {"exec", "attach", "portforward"}


class Link(msgspec.Struct, kw_only=True):
    """Index entry: this key belongs to that incident through ``thread``, registered first at ``first``
    and last at ``time`` (each alert of the story that registers it again moves ``time`` on)."""

    incident_id: str
    time: int
    thread: str
    node_id: str = ""
    first: int = 0


class StoryState(msgspec.Struct, kw_only=True):
    """The incident plus the graph facts needed to extend it (internal, not a contract)."""

    incident: Incident
    parents: dict[str, str] = {}  # node -> parent exec node
    node_pods: dict[str, str] = {}  # node -> pod key, for session/lateral edges
    node_times: dict[str, int] = {}
    link_keys: list[str] = []
    layers: list[str] = []
    phrases: dict[str, str] = {}  # alert id -> story phrase (AlertRef has no room for it)
    alert_actor: dict[str, str] = {}  # alert id -> label of who acted, when it was an API actor
    #: source workload key -> a connection from it into a workload of the story, kept until that
    #: source's own activity joins (the lateral thread told in the other order)
    contacts: dict[str, Event] = {}


def _merge_workload(workloads: list[Workload], new: Workload) -> None:
    """Add a workload once per pod; the richer record (with container and owner) wins."""
    if not new.pod and not new.namespace and new.is_host and not new.cluster:
        return
    for i, w in enumerate(workloads):
        same_pod = new.pod and w.pod == new.pod and w.namespace == new.namespace
        same_ns_only = not new.pod and w.namespace == new.namespace
        if same_pod or same_ns_only:
            if same_pod and not w.container_id and new.container_id:
                workloads[i] = new
            return
    workloads.append(new)


def _node_id(e: Event) -> str:
    if e.kind is EventKind.PROCESS_EXEC and e.process is not None and e.process.exec_id:
        return e.process.exec_id
    if e.kind is EventKind.K8S_API and e.audit is not None:
        return f"audit:{e.audit.audit_id}"
    return e.event_id


def _pod_key(w: Workload) -> str:
    return f"pod:{w.cluster}/{w.namespace}/{w.pod}" if w.pod else ""


_NET_KINDS = frozenset({EventKind.NET_CONNECT.value, EventKind.NET_ACCEPT.value, EventKind.NET_LISTEN.value})
#: clocks of different nodes and sensors disagree a little: "before" allows this much
_SLACK_NS = 5_000_000_000
_MAX_STORY_CONTACTS = 16


def _contact_source(c: Event) -> str:
    """The workload a connection into the alert's workload came from."""
    n = c.network
    if n is None or not n.peer_workload:
        return ""
    return n.peer_workload if c.kind is EventKind.NET_ACCEPT else c.workload.key()


def _actor_pod(e: Event) -> str:
    """The pod an API call came from (``audit.actor_workload``), as a link key."""
    actor = e.audit.actor_workload if e.audit is not None else None
    if actor is None or not actor.pod:
        return ""
    return f"pod:{actor.cluster or e.workload.cluster}/{actor.namespace}/{actor.pod}"


def _audit_target_pod(e: Event) -> str:
    a = e.audit
    if a is None or a.resource != "pods" or not a.name:
        return ""
    return f"pod:{e.workload.cluster}/{a.namespace}/{a.name}"


@dataclass
class Correlator:
    """Folds alerts into stories. ``stories`` and ``links`` are mappings (Faust tables in the
    worker, dicts in tests and offline scans)."""

    settings: CorrelateSettings = field(default_factory=CorrelateSettings)
    stories: MutableMapping[str, StoryState] = field(default_factory=dict)
    links: MutableMapping[str, Link] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window_ns = int(self.settings.link_window_s * 1e9)

    # -- linking ---------------------------------------------------------------------------
    def _probes(self, alert: Alert) -> list[tuple[str, str]]:
        """(link key, thread) pairs under which an existing story could claim this alert."""
        e = alert.event
        probes: list[tuple[str, str]] = []
        if e is None:
            return probes
        for ev in (e, *alert.context):
            p = ev.process
            if p is not None:
                if p.exec_id:
                    probes.append((f"exec:{p.exec_id}", "process_tree"))
                if p.parent_exec_id:
                    probes.append((f"exec:{p.parent_exec_id}", "process_tree"))
        w = alert.workload
        if e.kind is EventKind.K8S_API and e.audit is not None:
            a = e.audit
            target = _audit_target_pod(e)
            if target and a.subresource in _SESSION_SUBRESOURCES:
                probes.append((target, "exec_session"))
            elif target and a.verb == "create":
                probes.append((target, "privileged_pod"))
            if a.user.startswith("system:serviceaccount:"):
                sa = a.user.removeprefix("system:serviceaccount:")
                probes.append((f"sa:{w.cluster}/{sa}", "token_api"))
                probes.extend((f"ip:{w.cluster}/{ip}", "token_api") for ip in a.source_ips)
            actor = _actor_pod(e)
            if actor:
                # the call came from a pod: it joins what happens in that pod
                probes.append((actor, "token_api"))
        else:
            if w.pod:
                probes.append((_pod_key(w), "same_pod"))
            if not w.is_host:
                probes.append((f"peer:{w.key()}", "lateral"))
            # the other orders: the API call or the peer's activity may have been seen first
            # (events of different workloads travel on different partitions)
            if TOKEN_TAG in alert.tags:
                if w.service_account and w.namespace:
                    probes.append((f"sa:{w.cluster}/{w.namespace}:{w.service_account}", "token_api"))
                if w.pod_ip:
                    probes.append((f"ip:{w.cluster}/{w.pod_ip}", "token_api"))
            if e.network is not None and e.network.peer_workload:
                probes.append((f"wl:{e.network.peer_workload}", "lateral"))
        return probes

    def _registrations(self, alert: Alert) -> list[tuple[str, str]]:
        """(link key, thread) pairs this alert makes available to later alerts."""
        e = alert.event
        regs: list[tuple[str, str]] = []
        if e is None:
            return regs
        for ev in (e, *alert.context):
            if ev.process is not None and ev.process.exec_id:
                regs.append((f"exec:{ev.process.exec_id}", "process_tree"))
        w = alert.workload
        if e.kind is EventKind.K8S_API and e.audit is not None:
            target = _audit_target_pod(e)
            if target and e.audit.subresource in _SESSION_SUBRESOURCES:
                regs.append((target, "exec_session"))
            elif target and e.audit.verb == "create":
                regs.append((target, "privileged_pod"))
            if e.audit.user.startswith("system:serviceaccount:"):
                sa = e.audit.user.removeprefix("system:serviceaccount:")
                regs.append((f"sa:{w.cluster}/{sa}", "token_api"))
                regs.extend((f"ip:{w.cluster}/{ip}", "token_api") for ip in e.audit.source_ips)
            actor = _actor_pod(e)
            if actor:
                regs.append((actor, "token_api"))
        else:
            if w.pod:
                regs.append((_pod_key(w), "same_pod"))
            if not w.is_host:
                regs.append((f"wl:{w.key()}", "lateral"))
            if TOKEN_TAG in alert.tags:
                if w.service_account and w.namespace:
                    regs.append((f"sa:{w.cluster}/{w.namespace}:{w.service_account}", "token_api"))
                if w.pod_ip:
                    regs.append((f"ip:{w.cluster}/{w.pod_ip}", "token_api"))
            if e.network is not None and e.network.peer_workload:
                regs.append((f"peer:{e.network.peer_workload}", "lateral"))
        return regs

    def _candidates(self, alert: Alert) -> list[tuple[Link, str, Event | None]]:
        """(link, thread, contact) of every story this alert could join."""
        out: list[tuple[Link, str, Event | None]] = []
        window = self.window_ns
        for key, thread in self._probes(alert):
            link = self.links.get(key)
            if link is not None and abs(alert.time - link.time) <= window:
                out.append((link, thread, None))
        own = alert.workload.key() if not alert.workload.is_host else ""
        for contact in alert.contacts:
            # a connection into this workload from a workload whose story was going on before it
            source = _contact_source(contact)
            link = self.links.get(f"wl:{source}") if source and source != own else None
            if (
                link is not None
                and (link.first or link.time) <= contact.time + _SLACK_NS
                and contact.time - link.time <= window
                and alert.time - contact.time <= window
            ):
                out.append((link, "lateral", contact))
        if own and alert.event is not None and alert.event.kind is not EventKind.K8S_API:
            # the other order: a story elsewhere has a connection from this workload, made after this
            link = self.links.get(f"contact:{own}")
            if link is not None and alert.time <= link.time + _SLACK_NS and link.time - alert.time <= window:
                out.append((link, "lateral", None))
        return out

    def _find(self, alert: Alert) -> tuple[StoryState | None, set[str], list[Event], list[StoryState]]:
        """The story the alert joins (the oldest it could join), why, the connections that tie it, and
        the other stories it could join (it ties them to that one: they merge)."""
        threads: set[str] = set()
        found: StoryState | None = None
        matches: list[tuple[StoryState, str, Event | None]] = []
        for link, thread, contact in self._candidates(alert):
            state = self.stories.get(link.incident_id)
            if state is None:
                continue
            # the probe says why this alert joins; "same pod" is the weakest reason, so the link's
            # own thread (an exec session into that pod, say) says it better
            matches.append((state, link.thread if thread == "same_pod" else thread, contact))
            # the oldest story wins when an alert could join several
            if found is None or state.incident.first_seen < found.incident.first_seen:
                found = state
        ties: list[Event] = []
        for state, thread, contact in matches:
            if state is found:
                threads.add(thread)
                if contact is not None:
                    ties.append(contact)
        others: list[StoryState] = []
        for state, thread, contact in matches:
            if state is not found and all(o is not state for o in others):
                others.append(state)
                threads.add(thread)
                if contact is not None:
                    ties.append(contact)
        for state in [found, *others] if found is not None else []:
            pending = state.contacts.pop(alert.workload.key(), None) if "lateral" in threads else None
            if pending is not None:
                ties.append(pending)
        return found, threads, ties, others

    # -- the stage -------------------------------------------------------------------------
    def process(self, alert: Alert, now_ns: int | None = None) -> Incident | None:
        """Fold one alert in; returns the new revision of its story, or None when nothing changed
        (:meth:`process_alert` also gives the last revisions of stories it merged)."""
        revisions = self.process_alert(alert, now_ns)
        return revisions[-1] if revisions else None

    def process_alert(self, alert: Alert, now_ns: int | None = None) -> list[Incident]:
        """Fold one alert in; every incident revision to publish (stories it merged into its own
        first, closed with ``merged_into``; its own story last). Empty when nothing changed."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        existing = self._state_with_alert(alert)
        if existing is not None:
            updated = self._update_count(existing, alert, now_ns)
            return [updated] if updated is not None else []
        state, threads, ties, others = self._find(alert)
        if state is None:
            incident_id = "inc-" + hashlib.blake2b(alert.alert_id.encode(), digest_size=8).hexdigest()
            state = StoryState(
                incident=Incident(
                    incident_id=incident_id,
                    revision=0,
                    severity=alert.severity,
                    title="",
                    summary="",
                    first_seen=alert.time,
                    last_seen=alert.time,
                )
            )
        self._add(state, alert, threads, ties)
        self._touch(state, now_ns)
        incident_id = state.incident.incident_id
        node = _node_id(alert.event) if alert.event is not None else ""
        for key, thread in self._registrations(alert):
            self._register(state, key, thread, alert.time, node)
        own = alert.workload.key()
        for contact in alert.contacts:
            source = _contact_source(contact)
            if source and source != own and not any(w.key() == source for w in state.incident.workloads):
                # the source's own activity, told later, joins this story (see _candidates)
                self._register(state, f"contact:{source}", "lateral", contact.time, contact.event_id)
                state.contacts[source] = contact
                while len(state.contacts) > _MAX_STORY_CONTACTS:
                    state.contacts.pop(next(iter(state.contacts)))
        merged = [self._merge(state, other, now_ns) for other in others]
        if merged:
            self._rewrite(state, [], [])
        self.stories[incident_id] = state
        return [*merged, state.incident]

    def _merge(self, into: StoryState, other: StoryState, now_ns: int) -> Incident:
        """Move ``other`` into ``into`` (an alert tied them); ``other``'s last revision, closed."""
        inc, old = into.incident, other.incident
        known = {r.alert_id for r in inc.alerts}
        inc.alerts.extend(r for r in old.alerts if r.alert_id not in known)
        inc.first_seen = min(inc.first_seen, old.first_seen)
        inc.last_seen = max(inc.last_seen, old.last_seen)
        for w in old.workloads:
            _merge_workload(inc.workloads, w)
        inc.actors.extend(a for a in old.actors if a not in inc.actors)
        inc.mitre.extend(t for t in old.mitre if t not in inc.mitre)
        inc.threads.extend(t for t in old.threads if t not in inc.threads)
        nodes = {t.node_id for t in inc.timeline}
        inc.timeline.extend(t for t in old.timeline if t.node_id not in nodes)
        inc.timeline.sort(key=lambda t: (t.time, t.node_id))
        into.layers.extend(x for x in other.layers if x not in into.layers)
        into.parents = {**other.parents, **into.parents}
        into.node_pods = {**other.node_pods, **into.node_pods}
        into.node_times = {**other.node_times, **into.node_times}
        into.phrases = {**other.phrases, **into.phrases}
        into.alert_actor = {**other.alert_actor, **into.alert_actor}
        for source, contact in other.contacts.items():
            into.contacts.setdefault(source, contact)
        for key in other.link_keys:
            link = self.links.get(key)
            if link is not None and link.incident_id == old.incident_id:
                link.incident_id = inc.incident_id
                self.links[key] = link
                into.link_keys.append(key)
        other.link_keys = []
        other.contacts = {}
        old.status = IncidentStatus.CLOSED
        old.merged_into = inc.incident_id
        old.revision += 1
        old.updated = now_ns
        old.summary = f"Merged into {inc.incident_id}. {old.summary}"[:65536]
        self.stories[old.incident_id] = other
        return msgspec.structs.replace(old)

    def _register(self, state: StoryState, key: str, thread: str, at: int, node: str) -> None:
        incident_id = state.incident.incident_id
        current = self.links.get(key)
        if current is None or current.incident_id != incident_id:
            self.links[key] = Link(incident_id=incident_id, time=at, thread=thread, node_id=node, first=at)
            state.link_keys.append(key)
        elif at > current.time:
            # the story goes on: its link stays eligible for a link window after its latest use
            current.time = at
            self.links[key] = current

    def _state_with_alert(self, alert: Alert) -> StoryState | None:
        link = self.links.get(f"alert:{alert.alert_id}")
        return self.stories.get(link.incident_id) if link is not None else None

    def _update_count(self, state: StoryState, alert: Alert, now_ns: int) -> Incident | None:
        for ref in state.incident.alerts:
            if ref.alert_id == alert.alert_id:
                if alert.count <= ref.count:
                    return None  # a redelivery: nothing new to tell
                ref.count = alert.count
                break
        state.incident.last_seen = max(state.incident.last_seen, alert.last_seen)
        self._rewrite(state, [], [])
        self._touch(state, now_ns)
        self.stories[state.incident.incident_id] = state
        return state.incident

    def _touch(self, state: StoryState, now_ns: int) -> None:
        inc = state.incident
        inc.revision += 1
        inc.updated = now_ns
        inc.status = IncidentStatus.OPEN

    def _add(self, state: StoryState, alert: Alert, threads: set[str], ties: list[Event]) -> None:
        inc = state.incident
        self.links[f"alert:{alert.alert_id}"] = Link(
            incident_id=inc.incident_id, time=alert.time, thread="alert"
        )
        state.link_keys.append(f"alert:{alert.alert_id}")
        if len(inc.alerts) < _MAX_ALERTS:
            inc.alerts.append(
                AlertRef(
                    alert_id=alert.alert_id,
                    rule_id=alert.rule_id,
                    rule_name=alert.rule_name,
                    severity=alert.severity,
                    time=alert.time,
                    message=alert.message,
                    count=alert.count,
                )
            )
        inc.first_seen = min(inc.first_seen, alert.first_seen)
        inc.last_seen = max(inc.last_seen, alert.last_seen)
        _merge_workload(inc.workloads, alert.workload)
        if alert.event is not None and alert.event.audit is not None and alert.event.audit.actor_workload:
            _merge_workload(inc.workloads, alert.event.audit.actor_workload)
        for actor in alert.actors:
            if actor not in inc.actors:
                inc.actors.append(actor)
        for t in alert.mitre:
            if t not in inc.mitre:
                inc.mitre.append(t)
        for t in sorted(threads):
            if t not in inc.threads:
                inc.threads.append(t)
        if alert.event is not None and alert.event.source not in state.layers:
            state.layers.append(alert.event.source)
        events = [alert.event, *alert.context] if alert.event is not None else list(alert.context)
        self._rewrite(state, [*events, *ties], [alert])

    def _rewrite(self, state: StoryState, events: list[Event], new_alerts: list[Alert]) -> None:
        inc = state.incident
        known = {t.node_id: t for t in inc.timeline}
        trigger_ids = {a.event.event_id: a for a in new_alerts if a.event is not None}
        for ev in events:
            node = _node_id(ev)
            entry = known.get(node)
            alert = trigger_ids.get(ev.event_id)
            if entry is None:
                if len(inc.timeline) >= _MAX_TIMELINE:
                    continue
                entry = TimelineEntry(
                    time=ev.time,
                    event_id=ev.event_id,
                    kind=ev.kind.value,
                    text=story.describe(ev),
                    workload=story.workload_label(ev.workload),
                    node_id=node,
                )
                inc.timeline.append(entry)
                known[node] = entry
            if alert is not None:
                if alert.alert_id not in entry.alert_ids:
                    entry.alert_ids.append(alert.alert_id)
                for t in alert.mitre:
                    if t not in entry.mitre:
                        entry.mitre.append(t)
            p = ev.process
            if p is not None:
                if ev.kind is EventKind.PROCESS_EXEC and p.parent_exec_id:
                    state.parents[node] = p.parent_exec_id
                elif ev.kind is not EventKind.PROCESS_EXEC and p.exec_id:
                    state.parents[node] = p.exec_id
            if ev.kind is EventKind.K8S_API:
                target = _audit_target_pod(ev)
                if target:
                    state.node_pods[node] = target
            elif ev.workload.pod:
                state.node_pods[node] = _pod_key(ev.workload)
            state.node_times[node] = ev.time
        inc.timeline.sort(key=lambda t: (t.time, t.node_id))
        inc.edges = self._edges(state)
        refs = inc.alerts
        top = max((r.severity.rank for r in refs), default=0)
        distinct_rules = len({r.rule_id for r in refs})
        # a chain is worse than its worst link: more steps or more layers raise severity
        bump = 1 if distinct_rules >= 3 or len(state.layers) >= 2 or len(inc.threads) >= 2 else 0
        inc.severity = Severity.from_rank(top + bump)
        alerts_view = [
            Alert(
                alert_id=r.alert_id,
                rule_id=r.rule_id,
                rule_name=r.rule_name,
                severity=r.severity,
                message=r.message,
                story=self._story_of(r, new_alerts, state),
                time=r.time,
                first_seen=r.time,
                last_seen=r.time,
                count=r.count,
            )
            for r in refs
        ]
        inc.title = story.title(alerts_view, inc.actors, inc.workloads)
        inc.summary = story.summary(alerts_view, inc.actors, inc.workloads, inc.mitre, inc.severity.value)

    @staticmethod
    def _story_of(ref: AlertRef, new_alerts: list[Alert], state: StoryState) -> str:
        for a in new_alerts:
            if a.alert_id == ref.alert_id:
                # remember the phrase: later revisions rebuild the summary from refs
                state.phrases[ref.alert_id] = a.story
                if a.actors:
                    state.alert_actor[ref.alert_id] = a.actors[0].name
        phrase = state.phrases.get(ref.alert_id, "")
        who = state.alert_actor.get(ref.alert_id, "")
        lead = story.lead_actor(state.incident.actors)
        if phrase and who and who != lead:
            # someone other than the story's lead did this step: say who
            phrase = f"{who} {phrase}"
        return phrase

    @staticmethod
    def _edges(state: StoryState) -> list[Edge]:
        inc = state.incident
        nodes = {t.node_id: t for t in inc.timeline}
        edges: list[Edge] = []
        for node, parent in state.parents.items():
            if node in nodes and parent in nodes:
                kind = "parent_child"
                entry = nodes[node]
                if entry.kind == EventKind.NET_CONNECT.value:
                    kind = "connection"
                elif entry.kind in (EventKind.FILE_OPEN.value, EventKind.FILE_LINK.value):
                    kind = "file_access"
                elif entry.kind == EventKind.DNS_QUERY.value:
                    kind = "dns"
                elif entry.kind == EventKind.PRIVILEGE_CHANGE.value:
                    kind = "privilege"
                edges.append(Edge(src=parent, dst=node, kind=kind))
        ordered = sorted(nodes.values(), key=lambda t: t.time)
        runtime = [t for t in ordered if t.kind != EventKind.K8S_API.value]
        for t in ordered:
            if t.kind != EventKind.K8S_API.value:
                continue
            pod = state.node_pods.get(t.node_id, "")
            is_session = any(a in t.text for a in ("pods/exec", "pods/attach", "pods/portforward"))
            if pod:
                # the session's root processes: the first runtime nodes in that pod with no
                # parent inside the story
                roots = [
                    r
                    for r in runtime
                    if state.node_pods.get(r.node_id) == pod
                    and state.parents.get(r.node_id) not in nodes
                    and r.time >= t.time - 5_000_000_000
                ]
                if roots:
                    edges.append(
                        Edge(
                            src=t.node_id,
                            dst=roots[0].node_id,
                            kind="exec_session" if is_session else "privileged_pod",
                        )
                    )
        # token read -> API call of that service account
        token_nodes = [
            t for t in runtime if t.kind == EventKind.FILE_OPEN.value and "serviceaccount/token" in t.text
        ]
        api_calls = [
            t
            for t in ordered
            if t.kind == EventKind.K8S_API.value and t.text.startswith("system:serviceaccount:")
        ]
        for tok in token_nodes:
            for call in api_calls:
                if call.time >= tok.time:
                    edges.append(Edge(src=tok.node_id, dst=call.node_id, kind="token_api"))
        # connection into a peer workload -> first activity there
        for t in runtime:
            if t.kind == EventKind.NET_CONNECT.value and "(" in t.text:
                peer = t.text.rsplit("(", 1)[1].rstrip(")")
                for other in runtime:
                    if (
                        other.time >= t.time
                        and other.workload != t.workload
                        and peer.split("/")[1:2] == other.workload.split("/")[:1]
                    ):
                        edges.append(Edge(src=t.node_id, dst=other.node_id, kind="lateral"))
                        break
            elif t.kind == EventKind.NET_ACCEPT.value and "(" in t.text:
                # a connection accepted from another workload -> the first activity here after it
                for other in runtime:
                    if other.time >= t.time and other.workload == t.workload and other.kind not in _NET_KINDS:
                        edges.append(Edge(src=t.node_id, dst=other.node_id, kind="lateral"))
                        break
        unique: list[Edge] = []
        for e in edges:
            if e not in unique:
                unique.append(e)
        return unique

    def close_idle(self, now_ns: int) -> list[Incident]:
        """Close open stories without an update for ``inactivity_close_s``; each is a new revision."""
        limit = int(self.settings.inactivity_close_s * 1e9)
        closed = []
        for incident_id in list(self.stories):
            state = self.stories[incident_id]
            inc = state.incident
            if inc.status is IncidentStatus.OPEN and now_ns - inc.updated >= limit:
                inc.status = IncidentStatus.CLOSED
                inc.revision += 1
                inc.updated = now_ns
                self.stories[incident_id] = state
                closed.append(inc)
        return closed

    def process_many(self, alerts: Iterable[Alert]) -> list[Incident]:
        """Fold alerts in order; the latest revision of each incident touched."""
        latest: dict[str, Incident] = {}
        for alert in alerts:
            for inc in self.process_alert(alert):
                latest[inc.incident_id] = msgspec.structs.replace(inc)
        return list(latest.values())


def register(cadr_app: CadrApp) -> None:
    """Add the correlate agent: alerts → incidents, stories and links in Faust tables."""
    from schemas.codec import decode, decode_alert, encode
    from schemas.errors import RecordError
    from streams.tables import RecordTable

    settings = cadr_app.settings
    app = cadr_app.app
    parts = settings.kafka.partitions
    # use_partitioner: the idle-close timer writes outside any stream event. Stories of a
    # cluster must then live on one worker: run correlate in a single worker per cluster.
    # key_type/value_type bytes select Faust's "raw" codec, also when recovering from changelogs
    stories_table = app.Table(
        "cadr-stories", key_type=bytes, value_type=bytes, partitions=parts, use_partitioner=True
    )
    links_table = app.Table(
        "cadr-links", key_type=bytes, value_type=bytes, partitions=parts, use_partitioner=True
    )
    correlator = Correlator(
        settings=settings.correlate,
        stories=RecordTable(stories_table, lambda b: decode(b, StoryState, max_bytes=64 << 20)),
        links=RecordTable(links_table, lambda b: decode(b, Link)),
    )
    cadr_app.stages["correlate"] = correlator
    incidents_topic = cadr_app.topic("incidents")

    health = cadr_app.health

    @cadr_app.agent(cadr_app.topic("alerts"), name="cadr.correlate")
    async def correlate(stream):
        # one alert at a time: table writes go to the partition of the alert being handled,
        # which keeps each cluster's story state next to its alerts
        async for value in stream:
            try:
                alert = decode_alert(value)
            except RecordError:
                log.exception("undecodable alert")
                continue
            for incident in correlator.process_alert(alert):
                await incidents_topic.send(key=incident.incident_id.encode(), value=encode(incident))
            health.progress("cadr.correlate")

    @cadr_app.timer(
        max(1.0, min(30.0, settings.correlate.inactivity_close_s / 4)), "cadr.correlate.close-idle"
    )
    async def close_idle() -> None:
        for incident in correlator.close_idle(time.time_ns()):
            await incidents_topic.send(key=incident.incident_id.encode(), value=encode(incident))
