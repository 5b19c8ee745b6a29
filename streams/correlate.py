"""Stage 3 — correlate: ``cadr.alerts`` → ``cadr.incidents`` (stories).

Alerts join one story when they share a *thread*:

- ``process_tree``   the same process tree (an alert's exec_id or any ancestor's),
- ``exec_session``   a ``kubectl exec``/attach into a pod and the processes in that pod,
- ``token_api``      a service-account token read in a pod and API calls by that service
                     account (from the pod's IP), or any API call made from the pod,
- ``lateral``        a connection from workload A to workload B and then activity in B: the connection
                     an alert (``network.peer_workload``), or one of the alert's ``contacts`` (detect
                     gives each alert the recent connections into its workload) while A has a story,
- ``privileged_pod`` a privileged pod created through the API and activity inside it,
- ``same_pod``       other alerts of the same pod close in time.

Links (:mod:`streams.links`) are index entries valid for ``link_window`` after their latest use; they
work in both orders (audit events often arrive after the runtime events they caused). An alert that
could join two stories ties them: they merge, and the other's last revision says ``merged_into``.

Bounded state (whatever the alert rate): a story record lists at most ``max_alerts`` alerts (older ones
folded into the count of the first alert of their rule) and ``max_timeline`` timeline entries (the
beginning and the latest steps); a story keeps at most ``max_links`` link keys; links expire a link
window after their latest use, and a closed story's state is deleted a link window after it closed (its
last revision stays on the compacted incident topic). :attr:`Correlator.counters` counts every eviction.

Alerts are folded with :meth:`Correlator.add`; :meth:`Correlator.flush` writes the stories touched
since the last flush and returns one revision per story (the agent flushes once per batch of alerts, so
a burst into one story is one record, not one per alert). Pure logic; the Faust agent in
:func:`register` keeps the state in tables.
"""

from __future__ import annotations

import bisect
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
    Event,
    EventKind,
    Incident,
    IncidentStatus,
    Severity,
    TimelineEntry,
    Workload,
)
from schemas.settings import CorrelateSettings
from streams import story, storygraph
from streams.links import (
    Link,
    contact_source,
    node_id,
    pod_key,
    probes,
    registrations,
    target_pod,
)

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = ["Correlator", "Link", "StoryState", "register"]

log = logging.getLogger(__name__)

#: clocks of different nodes and sensors disagree a little: "before" allows this much
_SLACK_NS = 5_000_000_000
_MAX_STORY_CONTACTS = 16
#: an alert whose phrase sets the scene of its story (a release's notice), told first
_LEAD_TAG = "release"
#: link keys made per alert or process: the first to go when a story has too many
_PER_ALERT_KEYS = ("alert:", "exec:")
#: the share of ``max_timeline`` kept from the story's beginning when the middle is folded
_TIMELINE_HEAD = 4


class StoryState(msgspec.Struct, kw_only=True):
    """The incident plus the graph facts needed to extend it (internal, not a contract)."""

    incident: Incident
    parents: dict[str, str] = {}  # node -> parent exec node
    node_pods: dict[str, str] = {}  # node -> pod key, for session/lateral edges
    node_times: dict[str, int] = {}
    #: link keys registered for this story, oldest first (bounded: see max_links)
    link_keys: list[str] = []
    layers: list[str] = []
    phrases: dict[str, str] = {}  # alert id -> story phrase (AlertRef has no room for it)
    alert_actor: dict[str, str] = {}  # alert id -> label of who acted, when it was an API actor
    #: source workload key -> a connection from it into a workload of the story, kept until that
    #: source's own activity joins (the lateral thread told in the other order)
    contacts: dict[str, Event] = {}
    #: alerts whose phrase sets the story's scene (a release's notice: tag ``release``)
    leads: list[str] = []


def _entry_order(t: TimelineEntry) -> tuple[int, str]:
    return t.time, t.node_id


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


@dataclass
class Correlator:
    """Folds alerts into stories. ``stories`` and ``links`` are mappings (Faust tables in the
    worker, dicts in tests and offline scans); writes to them wait for :meth:`flush`."""

    settings: CorrelateSettings = field(default_factory=CorrelateSettings)
    stories: MutableMapping[str, StoryState] = field(default_factory=dict)
    links: MutableMapping[str, Link] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window_ns = int(self.settings.link_window_s * 1e9)
        # writes of this batch (None: delete), read through before the tables
        self._dirty: dict[str, StoryState] = {}
        self._merged: list[Incident] = []
        self._link_writes: dict[str, Link | None] = {}
        #: the newest alert time seen: links older than a link window before it expire
        self.watermark = 0
        self.counters = {
            "alerts": 0,
            "revisions": 0,
            "merged": 0,
            "alerts_folded": 0,
            "timeline_folded": 0,
            "links_evicted": 0,
            "links_expired": 0,
            "stories_closed": 0,
            "stories_deleted": 0,
        }

    # -- reads and writes through this batch --------------------------------------------------

    def _link(self, key: str) -> Link | None:
        if key in self._link_writes:
            return self._link_writes[key]
        return self.links.get(key)

    def _story(self, incident_id: str) -> StoryState | None:
        state = self._dirty.get(incident_id)
        return state if state is not None else self.stories.get(incident_id)

    # -- linking ------------------------------------------------------------------------------

    def _candidates(self, alert: Alert) -> list[tuple[Link, str, Event | None]]:
        """(link, thread, contact) of every story this alert could join."""
        out: list[tuple[Link, str, Event | None]] = []
        window = self.window_ns
        for key, thread in probes(alert):
            link = self._link(key)
            if link is not None and abs(alert.time - link.time) <= window:
                out.append((link, thread, None))
        own = alert.workload.key() if not alert.workload.is_host else ""
        for contact in alert.contacts:
            # a connection into this workload from a workload whose story was going on before it
            source = contact_source(contact)
            link = self._link(f"wl:{source}") if source and source != own else None
            if (
                link is not None
                and (link.first or link.time) <= contact.time + _SLACK_NS
                and contact.time - link.time <= window
                and alert.time - contact.time <= window
            ):
                out.append((link, "lateral", contact))
        if own and alert.event is not None and alert.event.kind is not EventKind.K8S_API:
            # the other order: a story elsewhere has a connection from this workload, made after this
            link = self._link(f"contact:{own}")
            if link is not None and alert.time <= link.time + _SLACK_NS and link.time - alert.time <= window:
                out.append((link, "lateral", None))
        return out

    def _find(self, alert: Alert) -> tuple[StoryState | None, set[str], list[Event], list[StoryState]]:
        """The story the alert joins (the oldest it could join), why, the connections that tie it, and
        the other stories it could join (it ties them to that one: they merge)."""
        found: StoryState | None = None
        matches: list[tuple[StoryState, str, Event | None]] = []
        for link, thread, contact in self._candidates(alert):
            state = self._story(link.incident_id)
            if state is None or state.incident.merged_into:
                continue
            # the probe says why this alert joins; "same pod" is the weakest reason, so the link's
            # own thread (an exec session into that pod, say) says it better
            matches.append((state, link.thread if thread == "same_pod" else thread, contact))
            # the oldest story wins when an alert could join several
            if found is None or state.incident.first_seen < found.incident.first_seen:
                found = state
        threads: set[str] = set()
        ties: list[Event] = []
        others: list[StoryState] = []
        for state, thread, contact in matches:
            threads.add(thread)
            if contact is not None:
                ties.append(contact)
            if state is not found and all(o is not state for o in others):
                others.append(state)
        if "lateral" in threads:
            for state in [s for s in (found, *others) if s is not None]:
                pending = state.contacts.pop(alert.workload.key(), None)
                if pending is not None:
                    ties.append(pending)
        return found, threads, ties, others

    # -- the stage ----------------------------------------------------------------------------

    def process(self, alert: Alert, now_ns: int | None = None) -> Incident | None:
        """Fold one alert in and flush; the new revision of its story, or None when nothing changed
        (:meth:`process_alert` also gives the last revisions of stories it merged)."""
        revisions = self.process_alert(alert, now_ns)
        return revisions[-1] if revisions else None

    def process_alert(self, alert: Alert, now_ns: int | None = None) -> list[Incident]:
        """:meth:`add` then :meth:`flush`."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        self.add(alert, now_ns)
        return self.flush(now_ns)

    def process_many(self, alerts: Iterable[Alert]) -> list[Incident]:
        """Fold alerts in order (one revision per alert); the latest revision of each incident touched."""
        latest: dict[str, Incident] = {}
        for alert in alerts:
            for inc in self.process_alert(alert):
                latest[inc.incident_id] = msgspec.structs.replace(inc)
        return list(latest.values())

    def add(self, alert: Alert, now_ns: int) -> bool:
        """Fold one alert into its story (written at :meth:`flush`); False when it changes nothing."""
        self.counters["alerts"] += 1
        self.watermark = max(self.watermark, alert.time)
        link = self._link(f"alert:{alert.alert_id}")
        existing = self._story(link.incident_id) if link is not None else None
        if existing is not None and existing.incident.merged_into:
            existing = self._story(existing.incident.merged_into)
        if existing is not None:
            return self._update_count(existing, alert)
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
        self._dirty[state.incident.incident_id] = state
        self._add(state, alert, threads, ties)
        node = node_id(alert.event) if alert.event is not None else ""
        self._register(state, f"alert:{alert.alert_id}", "alert", alert.time, node)
        for key, thread in registrations(alert):
            self._register(state, key, thread, alert.time, node)
        own = alert.workload.key()
        for contact in alert.contacts:
            source = contact_source(contact)
            if source and source != own and not any(w.key() == source for w in state.incident.workloads):
                # the source's own activity, told later, joins this story (see _candidates)
                self._register(state, f"contact:{source}", "lateral", contact.time, contact.event_id)
                state.contacts[source] = contact
                while len(state.contacts) > _MAX_STORY_CONTACTS:
                    state.contacts.pop(next(iter(state.contacts)))
        for other in others:
            self._merge(state, other, now_ns)
        self._bound_links(state)
        return True

    def flush(self, now_ns: int | None = None) -> list[Incident]:
        """Write the stories and links changed since the last flush; one revision per story changed
        (stories merged into another first, closed), in that order."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        out = self._merged
        self._merged = []
        for state in self._dirty.values():
            if state.incident.merged_into:
                continue
            self._finish(state)
            inc = state.incident
            inc.revision += 1
            inc.updated = now_ns
            inc.status = IncidentStatus.OPEN
            out.append(inc)
        for incident_id, state in self._dirty.items():
            self.stories[incident_id] = state
        self._dirty = {}
        for key, value in self._link_writes.items():
            if value is None:
                self.links.pop(key, None)
            else:
                self.links[key] = value
        self._link_writes = {}
        self.counters["revisions"] += len(out)
        return out

    # -- state of one story -------------------------------------------------------------------

    def _register(self, state: StoryState, key: str, thread: str, at: int, node: str) -> None:
        incident_id = state.incident.incident_id
        current = self._link(key)
        if current is None or current.incident_id != incident_id:
            self._link_writes[key] = Link(
                incident_id=incident_id, time=at, thread=thread, node_id=node, first=at
            )
            state.link_keys.append(key)
        elif at > current.time:
            # the story goes on: its link stays eligible for a link window after its latest use
            self._link_writes[key] = msgspec.structs.replace(current, time=at)

    def _drop_link(self, key: str, incident_id: str) -> bool:
        link = self._link(key)
        if link is not None and link.incident_id == incident_id:
            self._link_writes[key] = None
            return True
        return False

    def _bound_links(self, state: StoryState) -> None:
        """At most ``max_links`` keys: the oldest per-alert and per-process keys go first (a story
        has few pod, workload, service-account and IP keys, and those keep it findable)."""
        keys = state.link_keys
        if len(keys) <= self.settings.max_links:
            return
        over = len(keys) - self.settings.max_links * 9 // 10  # a tenth at a time: amortized
        drop = {k for k in keys if k.startswith(_PER_ALERT_KEYS)}
        chosen = [k for k in keys if k in drop][:over]
        if len(chosen) < over:
            chosen += [k for k in keys if k not in drop][: over - len(chosen)]
        gone = set(chosen)
        for key in chosen:
            if self._drop_link(key, state.incident.incident_id):
                self.counters["links_evicted"] += 1
        state.link_keys = [k for k in keys if k not in gone]

    def _update_count(self, state: StoryState, alert: Alert) -> bool:
        inc = state.incident
        for ref in inc.alerts:
            if ref.alert_id == alert.alert_id:
                if alert.count <= ref.count:
                    return False  # a redelivery: nothing new to tell
                ref.count = alert.count
                # an alert that folds news (a release's notice) tells the newest in its message
                ref.message = alert.message
                if alert.story:
                    state.phrases[alert.alert_id] = alert.story
                break
        else:
            # folded into the first entry of its rule: its new count is not told (its last_seen is)
            if alert.last_seen <= inc.last_seen:
                return False
        inc.last_seen = max(inc.last_seen, alert.last_seen)
        self._dirty[inc.incident_id] = state
        return True

    def _add(self, state: StoryState, alert: Alert, threads: set[str], ties: list[Event]) -> None:
        inc = state.incident
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
        # (a story written before alert_count existed counts what it lists)
        inc.alert_count = max(inc.alert_count + 1, len(inc.alerts) + inc.folded_alerts)
        state.phrases[alert.alert_id] = alert.story
        if _LEAD_TAG in alert.tags:
            state.leads.append(alert.alert_id)
        if alert.actors:
            state.alert_actor[alert.alert_id] = alert.actors[0].name
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
        self._timeline(state, [*events, *ties], alert)
        self._fold_alerts(state)

    def _fold_alerts(self, state: StoryState) -> None:
        """Keep at most ``max_alerts`` entries: the oldest entries that are not the first of their rule
        are folded into that first one (their counts added to its ``folded``), a tenth of the cap at a
        time (amortized: a busy story pays this once per that many alerts)."""
        inc = state.incident
        cap = self.settings.max_alerts
        if len(inc.alerts) <= cap:
            return
        over = len(inc.alerts) - max(1, cap * 9 // 10)
        first: dict[str, AlertRef] = {}
        keep: list[AlertRef] = []
        moved: dict[str, str] = {}  # folded alert id -> the entry it went into
        for ref in inc.alerts:
            head = first.get(ref.rule_id)
            if head is None:
                first[ref.rule_id] = ref
                keep.append(ref)
            elif over > 0:
                head.folded += ref.count + ref.folded
                over -= 1
                moved[ref.alert_id] = head.alert_id
                state.phrases.pop(ref.alert_id, None)
                state.alert_actor.pop(ref.alert_id, None)
                if ref.alert_id in state.leads:
                    state.leads.remove(ref.alert_id)
            else:
                keep.append(ref)
        inc.alerts = keep
        inc.folded_alerts += len(moved)
        self.counters["alerts_folded"] += len(moved)
        for entry in inc.timeline:
            if any(a in moved for a in entry.alert_ids):
                ids = [moved.get(a, a) for a in entry.alert_ids]
                entry.alert_ids = list(dict.fromkeys(ids))

    def _timeline(self, state: StoryState, events: list[Event], alert: Alert | None) -> None:
        inc = state.incident
        timeline = inc.timeline
        trigger = alert.event.event_id if alert is not None and alert.event is not None else ""
        for ev in events:
            node = node_id(ev)
            if node in state.node_times:  # every timeline node has a time there
                entry = next((t for t in reversed(timeline) if t.node_id == node), None)
            else:
                entry = None
            if entry is None:
                entry = TimelineEntry(
                    time=ev.time,
                    event_id=ev.event_id,
                    kind=ev.kind.value,
                    text=story.describe(ev),
                    workload=story.workload_label(ev.workload),
                    node_id=node,
                )
                if not timeline or (timeline[-1].time, timeline[-1].node_id) <= (ev.time, node):
                    timeline.append(entry)  # the common case: in time order
                else:
                    bisect.insort(timeline, entry, key=_entry_order)
            if alert is not None and ev.event_id == trigger:
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
                target = target_pod(ev)
                if target:
                    state.node_pods[node] = target
            elif ev.workload.pod:
                state.node_pods[node] = pod_key(ev.workload)
            state.node_times[node] = ev.time
        self._fold_timeline(state)

    def _fold_timeline(self, state: StoryState) -> None:
        """Keep the story's beginning and its latest steps; entries in between leave (with their
        graph facts), counted; a tenth of the cap at a time."""
        inc = state.incident
        cap = self.settings.max_timeline
        if len(inc.timeline) <= cap:
            return
        over = len(inc.timeline) - max(1, cap * 9 // 10)
        head = max(1, cap // _TIMELINE_HEAD)
        dropped = inc.timeline[head : head + over]
        del inc.timeline[head : head + over]
        for entry in dropped:
            state.parents.pop(entry.node_id, None)
            state.node_pods.pop(entry.node_id, None)
            state.node_times.pop(entry.node_id, None)
        inc.folded_timeline += len(dropped)
        self.counters["timeline_folded"] += len(dropped)

    def _finish(self, state: StoryState) -> None:
        """The derived parts of the record: edges, severity, title, summary."""
        inc = state.incident
        inc.edges = storygraph.edges(
            inc.timeline, state.parents, state.node_pods, limit=4 * self.settings.max_timeline
        )
        refs = inc.alerts
        top = max((r.severity.rank for r in refs), default=0)
        distinct_rules = len({r.rule_id for r in refs})
        # a chain is worse than its worst link: more steps or more layers raise severity
        bump = 1 if distinct_rules >= 3 or len(state.layers) >= 2 or len(inc.threads) >= 2 else 0
        inc.severity = Severity.from_rank(top + bump)
        lead = story.lead_actor(inc.actors)
        alerts_view = [
            Alert(
                alert_id=r.alert_id,
                rule_id=r.rule_id,
                rule_name=r.rule_name,
                severity=r.severity,
                message=r.message,
                story=self._phrase(state, r, lead),
                time=r.time,
                first_seen=r.time,
                last_seen=r.time,
                count=r.count + r.folded,
            )
            for r in refs
        ]
        inc.title = story.title(alerts_view, inc.actors, inc.workloads)
        inc.summary = story.summary(
            alerts_view,
            inc.actors,
            inc.workloads,
            inc.mitre,
            inc.severity.value,
            total=inc.alert_count,
            leads=frozenset(state.leads),
        )

    @staticmethod
    def _phrase(state: StoryState, ref: AlertRef, lead: str) -> str:
        phrase = state.phrases.get(ref.alert_id, "")
        who = state.alert_actor.get(ref.alert_id, "")
        if phrase and who and who != lead:
            # someone other than the story's lead did this step: say who
            phrase = f"{who} {phrase}"
        return phrase

    def _merge(self, into: StoryState, other: StoryState, now_ns: int) -> None:
        """Move ``other`` into ``into`` (an alert tied them); ``other``'s last revision is closed."""
        inc, old = into.incident, other.incident
        known = {r.alert_id for r in inc.alerts}
        inc.alerts.extend(r for r in old.alerts if r.alert_id not in known)
        inc.alerts.sort(key=lambda r: r.time)
        inc.alert_count += old.alert_count
        inc.folded_alerts += old.folded_alerts
        inc.folded_timeline += old.folded_timeline
        inc.first_seen = min(inc.first_seen, old.first_seen)
        inc.last_seen = max(inc.last_seen, old.last_seen)
        for w in old.workloads:
            _merge_workload(inc.workloads, w)
        inc.actors.extend(a for a in old.actors if a not in inc.actors)
        inc.mitre.extend(t for t in old.mitre if t not in inc.mitre)
        inc.threads.extend(t for t in old.threads if t not in inc.threads)
        nodes = {t.node_id for t in inc.timeline}
        inc.timeline.extend(t for t in old.timeline if t.node_id not in nodes)
        inc.timeline.sort(key=_entry_order)
        into.layers.extend(x for x in other.layers if x not in into.layers)
        into.parents = {**other.parents, **into.parents}
        into.node_pods = {**other.node_pods, **into.node_pods}
        into.node_times = {**other.node_times, **into.node_times}
        into.phrases = {**other.phrases, **into.phrases}
        into.alert_actor = {**other.alert_actor, **into.alert_actor}
        into.leads.extend(a for a in other.leads if a not in into.leads)
        for source, contact in other.contacts.items():
            into.contacts.setdefault(source, contact)
        for key in other.link_keys:
            link = self._link(key)
            if link is not None and link.incident_id == old.incident_id:
                self._link_writes[key] = msgspec.structs.replace(link, incident_id=inc.incident_id)
                into.link_keys.append(key)
        self._fold_alerts(into)
        self._fold_timeline(into)
        other.link_keys = []
        other.contacts = {}
        old.status = IncidentStatus.CLOSED
        old.merged_into = inc.incident_id
        old.revision += 1
        old.updated = now_ns
        old.summary = f"Merged into {inc.incident_id}. {old.summary}"[:65536]
        self._dirty[old.incident_id] = other
        self._merged.append(old)
        self.counters["merged"] += 1

    # -- closing and forgetting ---------------------------------------------------------------

    def close_idle(self, now_ns: int) -> list[Incident]:
        """Close open stories without an update for ``inactivity_close_s`` (each a new revision), drop
        links a link window past their latest use, and delete the state of stories closed more than a
        link window ago (their last revision stays on the incident topic). Revisions of alerts added
        and not flushed yet come first."""
        closed = self.flush(now_ns) if self._dirty or self._merged or self._link_writes else []
        limit = int(self.settings.inactivity_close_s * 1e9)
        horizon = self.watermark - self.window_ns
        for incident_id in list(self.stories):
            state = self.stories.get(incident_id)
            if state is None:
                continue
            inc = state.incident
            if inc.status is IncidentStatus.CLOSED:
                if now_ns - inc.updated >= max(limit, self.window_ns):
                    self._forget(state)
                continue
            if now_ns - inc.updated >= limit:
                inc.status = IncidentStatus.CLOSED
                inc.revision += 1
                inc.updated = now_ns
                self.stories[incident_id] = state
                closed.append(inc)
                self.counters["stories_closed"] += 1
            elif horizon > 0:
                self._expire_links(state, horizon)
        return closed

    def _expire_links(self, state: StoryState, horizon: int) -> None:
        keep: list[str] = []
        incident_id = state.incident.incident_id
        for key in state.link_keys:
            link = self.links.get(key)
            if link is None or link.incident_id != incident_id:
                continue  # taken over by another story, or gone
            if link.time < horizon:
                del self.links[key]
                self.counters["links_expired"] += 1
            else:
                keep.append(key)
        if len(keep) != len(state.link_keys):
            state.link_keys = keep
            self.stories[incident_id] = state

    def _forget(self, state: StoryState) -> None:
        incident_id = state.incident.incident_id
        for key in state.link_keys:
            link = self.links.get(key)
            if link is not None and link.incident_id == incident_id:
                del self.links[key]
                self.counters["links_expired"] += 1
        del self.stories[incident_id]
        self.counters["stories_deleted"] += 1


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
    cadr_app.health.metrics["correlate"] = correlator.counters
    incidents_topic = cadr_app.topic("incidents")
    batch = min(settings.worker.batch_size, 500)
    within = settings.worker.batch_window_s
    health = cadr_app.health

    @cadr_app.agent(cadr_app.topic("alerts"), name="cadr.correlate")
    async def correlate(stream):
        # a batch of alerts at a time, one revision per story touched: a burst into one story is one
        # record. Table writes happen at the flush, before the batch is acknowledged.
        async for values in stream.take(batch, within=within):
            now = time.time_ns()
            for value in values:
                try:
                    alert = decode_alert(value)
                except RecordError:
                    log.exception("undecodable alert")
                    continue
                correlator.add(alert, now)
            futures = [
                await incidents_topic.send(key=inc.incident_id.encode(), value=encode(inc))
                for inc in correlator.flush(now)
            ]
            for fut in futures:
                await fut
            health.progress("cadr.correlate", len(values))

    @cadr_app.timer(
        max(1.0, min(30.0, settings.correlate.inactivity_close_s / 4)), "cadr.correlate.close-idle"
    )
    async def close_idle() -> None:
        for incident in correlator.close_idle(time.time_ns()):
            await incidents_topic.send(key=incident.incident_id.encode(), value=encode(incident))
