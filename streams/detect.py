"""Stage 2 — baseline + detect: ``cadr.events`` → ``cadr.alerts`` (+ ``cadr.profiles``).

For each event: learn it into the workload's profile (while learning), remember the few
facts rules need across events (the process tree, files written per container), evaluate
the rules indexed by the event's kind, and fold repeats of one cause into one alert with a
count. Everything here is pure and synchronous; :func:`register` wraps it in a Faust agent.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas.records import Actor, Alert, Event, EventKind, Profile
from schemas.settings import DetectSettings
from streams.baseline import Baselines
from streams.lru import Lru
from streams.rules import EvalContext, Match, RuleSet, load_rules

if TYPE_CHECKING:
    from streams.app import CadrApp

__all__ = ["TOKEN_TAG", "DetectState", "Detector", "actors_of", "register", "scan_events"]

log = logging.getLogger(__name__)

_ANCESTRY_DEPTH = 8
#: most event times remembered per repeat key: a threshold rule counts to a small number
_MAX_REPEATS = 256
_CONTACT_KINDS = frozenset({EventKind.NET_CONNECT, EventKind.NET_ACCEPT})
#: a process tree started from outside a container this long after its first event is an exec session
_SESSION_AFTER_NS = 1_000_000_000
#: source workloads remembered per workload, and given with an alert
_MAX_CONTACTS = 16
_ALERT_CONTACTS = 4
#: a rule whose matches fold into one alert for as long as detect remembers it, whatever the cooldown,
#: each repeat re-published with the newest message (a release's "behaviour changed" notice)
ONCE_TAG = "once"
#: the tag of an alert whose event reads a service-account token
TOKEN_TAG = "sa_token"
_TOKEN_READ = "opened_file and sa_token_file and not write_open"


class DetectState:
    """Short-lived per-node facts: the process tree (exec_id → exec event) and files written
    per container. Bounded LRUs: enough to explain an alert, never a memory leak."""

    def __init__(
        self,
        max_procs: int = 200_000,
        max_written: int = 100_000,
        max_keys: int = 50_000,
        max_contacts: int = 100_000,
    ) -> None:
        self.procs: Lru[str, object] = Lru(max_procs)
        self.written_files: Lru[str, object] = Lru(max_written)
        self.recent: Lru[str, object] = Lru(max_keys)
        # workload key -> {source workload key -> the latest connection from it into this workload}
        self.contacts: Lru[str, object] = Lru(max_contacts)
        # container id -> time of its first event seen (its start, or when cadr first saw it)
        self.first_seen: Lru[str, object] = Lru(max_written)

    def observe(self, event: Event) -> None:
        p = event.process
        kind = event.kind
        cid = event.workload.container_id
        if cid and cid not in self.first_seen:
            self.first_seen.put(cid, event.time)
        if kind is EventKind.PROCESS_EXEC and p is not None and p.exec_id:
            self.procs.put(p.exec_id, event)
        elif kind is EventKind.FILE_OPEN and event.file is not None and event.file.write:
            self.written_files.put(f"{event.workload.container_id}\x1f{event.file.path}", event)
        elif kind in _CONTACT_KINDS and event.network is not None and event.network.peer_workload:
            self._contact(event)

    def _contact(self, event: Event) -> None:
        assert event.network is not None
        own, peer = event.workload.key(), event.network.peer_workload
        # a connect names the workload it reached; an accept the one it came from
        target, source = (peer, own) if event.kind is EventKind.NET_CONNECT else (own, peer)
        if target == source:
            return
        found = self.contacts.get(target)
        sources: dict[str, Event] = found if isinstance(found, dict) else {}
        sources.pop(source, None)
        sources[source] = event
        if len(sources) > _MAX_CONTACTS:
            sources.pop(next(iter(sources)))
        self.contacts.put(target, sources)

    def contacts_of(self, event: Event, window_ns: int) -> list[Event]:
        """Connections into ``event``'s workload from other workloads within ``window_ns`` before it
        (the latest per source workload, newest first)."""
        found = self.contacts.get(event.workload.key())
        if not isinstance(found, dict):
            return []
        recent = [c for c in found.values() if 0 <= event.time - c.time <= window_ns]
        recent.sort(key=lambda c: c.time, reverse=True)
        return recent[:_ALERT_CONTACTS]

    def session_of(self, event: Event) -> str:
        """The actor session an event belongs to: ``<pod>/<exec id of the session's first process>``
        for a process tree someone started in a running container (``kubectl exec``: a terminal, or a
        process started from outside the container after it was up); "" for the container's own tree,
        host processes, API events and whatever the tree seen so far cannot tell."""
        wl = event.workload
        cid = wl.container_id
        if not cid or not wl.pod or event.process is None:
            return ""
        line = ([event] if event.kind is EventKind.PROCESS_EXEC else []) + self.ancestry(event)
        root: Event | None = None
        outside = False
        for ev in line:
            if ev.workload.container_id != cid:
                outside = True  # its parent is known to run outside the container (runc, a shim)
                break
            root = ev
        if root is None or root.process is None:
            return ""
        started = self.first_seen.get(cid)
        late = isinstance(started, int) and root.time - started > _SESSION_AFTER_NS
        if root.process.tty or (outside and late):
            return f"{wl.pod}/{root.process.exec_id}"
        return ""

    def written(self, event: Event, path: str) -> bool:
        return f"{event.workload.container_id}\x1f{path}" in self.written_files

    def repeats(self, event: Event, key: str, window_ns: int) -> int:
        """Count this event under ``key`` and return how many were counted within ``window_ns`` before it."""
        times = self.recent.get(key)
        if not isinstance(times, deque):
            times = deque(maxlen=_MAX_REPEATS)
        times.append(event.time)
        oldest = event.time - window_ns
        while times and times[0] < oldest:
            times.popleft()
        self.recent.put(key, times)
        return len(times)

    def write_event(self, event: Event, path: str) -> Event | None:
        found = self.written_files.get(f"{event.workload.container_id}\x1f{path}")
        return found if isinstance(found, Event) else None

    def ancestry(self, event: Event) -> list[Event]:
        """The exec events of the process's ancestors, nearest first (as far as seen)."""
        chain: list[Event] = []
        p = event.process
        parent = p.parent_exec_id if p is not None else ""
        if event.kind is not EventKind.PROCESS_EXEC and p is not None and p.exec_id:
            own = self.procs.get(p.exec_id)
            if isinstance(own, Event):
                chain.append(own)
        seen = set()
        while parent and parent not in seen and len(chain) < _ANCESTRY_DEPTH:
            seen.add(parent)
            found = self.procs.get(parent)
            if not isinstance(found, Event) or found.process is None:
                break
            chain.append(found)
            parent = found.process.parent_exec_id
        return chain


def actors_of(event: Event) -> list[Actor]:
    """Who acted: the API user (human or service account) of an audit event, named as Kubernetes
    names it (a service account is ``system:serviceaccount:<namespace>:<name>``)."""
    a = event.audit
    if a is None or not a.user:
        return []
    actors = []
    if a.user.startswith("system:serviceaccount:"):
        actors.append(Actor(kind="service_account", name=a.user))
    else:
        actors.append(Actor(kind="user", name=a.user))
    if a.impersonated_user:
        actors.append(Actor(kind="user", name=a.impersonated_user))
    return actors


@dataclass
class _Open:
    alert: Alert
    emitted_count: int


@dataclass
class Detector:
    """Baseline + rules + dedup for a stream of events (one partition's worth)."""

    rules: RuleSet
    settings: DetectSettings = field(default_factory=DetectSettings)
    profiles: MutableMapping[str, Profile] = field(default_factory=dict)
    state: DetectState = field(default_factory=DetectState)
    #: how far back an alert's contacts go (correlation's link window)
    contact_window_s: float = 900.0

    def __post_init__(self) -> None:
        self.baselines = Baselines(
            self.profiles,
            learning_window_ns=int(self.settings.learning_window_s * 1e9),
            window_label=self.settings.learning_window_label,
        )
        self._open: Lru[str, _Open] = Lru(100_000)
        self._cooldown_ns = int(self.settings.cooldown_s * 1e9)
        # an alert whose event reads a service-account token, whichever rule fired (a shell's read, an
        # anomaly on the token file ...), carries the tag correlation links later API calls by
        # (streams.correlate); "token file" is the rules' own macro, so it has one definition
        compiler = self.rules.compiler
        self._reads_token = (
            compiler.compile(_TOKEN_READ)
            if compiler is not None and "sa_token_file" in compiler.macros
            else None
        )
        self.counters = {"events": 0, "matches": 0, "alerts": 0, "suppressed": 0}

    def process(self, event: Event) -> list[Alert]:
        """Alerts to publish for ``event`` (new alerts, and count updates of open ones)."""
        self.counters["events"] += 1
        view = self.baselines.observe(event)
        ctx = EvalContext(event=event, baseline=view, state=self.state)
        matches = self.rules.evaluate(event, ctx)
        # state is updated after evaluation: a write and an exec of the same file in one
        # event cannot happen, and a rule must see the tree as it was before this event
        self.state.observe(event)
        out = []
        for match in matches:
            self.counters["matches"] += 1
            alert = self._fold(match, event)
            if alert is not None:
                out.append(alert)
        return out

    def process_many(self, events: Iterable[Event]) -> list[Alert]:
        out: list[Alert] = []
        for event in events:
            out.extend(self.process(event))
        return out

    def _fold(self, match: Match, event: Event) -> Alert | None:
        # a rule's dedup key folds repeats of one cause (often per workload: replicas share it); an
        # actor's session is its own cause: a second person's commands in another replica are theirs
        key = f"{match.rule.id}\x1f{match.dedup_key}\x1f{self.state.session_of(event)}"
        current = self._open.get(key)
        once = ONCE_TAG in match.rule.tags
        if current is not None and (once or event.time - current.alert.first_seen < self._cooldown_ns):
            alert = current.alert
            alert.count += 1
            alert.last_seen = max(alert.last_seen, event.time)
            if once:
                # one alert for good (a release's notice): each repeat is news, told in its message
                alert.message, alert.story = match.message, match.story
                current.emitted_count = alert.count
                return alert
            # re-publish at 2, 10, 100, 1000 ... so the story's count stays honest without
            # one message per repeat
            if alert.count == 2 or alert.count in (10, 100, 1000, 10_000) or alert.count % 100_000 == 0:
                current.emitted_count = alert.count
                return alert
            self.counters["suppressed"] += 1
            return None
        alert = self._new_alert(match, event)
        self._open.put(key, _Open(alert=alert, emitted_count=1))
        self.counters["alerts"] += 1
        return alert

    def _new_alert(self, match: Match, event: Event) -> Alert:
        rule = match.rule
        # Deterministic id: a redelivered event after a crash yields the same alert id, so
        # correlation folds it instead of telling the story twice.
        alert_id = hashlib.blake2b(
            f"{rule.id}\x1f{match.dedup_key}\x1f{event.event_id}".encode(), digest_size=10
        ).hexdigest()
        context = self.state.ancestry(event)
        if event.process is not None and event.kind is EventKind.PROCESS_EXEC and event.process.exe:
            wrote = self.state.write_event(event, event.process.exe)
            if wrote is not None:
                context.append(wrote)
        tags = [rule.tactic, *rule.tags] if rule.tactic else list(rule.tags)
        if (
            TOKEN_TAG not in tags
            and self._reads_token is not None
            and self._reads_token(EvalContext(event=event))
        ):
            tags.append(TOKEN_TAG)
        wl = event.workload
        contacts = [] if wl.is_host else self.state.contacts_of(event, int(self.contact_window_s * 1e9))
        return Alert(
            alert_id=alert_id,
            rule_id=rule.id,
            rule_name=rule.name,
            severity=rule.severity,
            mitre=list(rule.mitre),
            message=match.message,
            story=match.story,
            time=event.time,
            first_seen=event.time,
            last_seen=event.time,
            count=1,
            dedup_key=match.dedup_key,
            workload=event.workload,
            actors=actors_of(event),
            event=event,
            context=context,
            tags=tags,
            rule_author=rule.author,
            contacts=contacts,
        )


def build_detector(
    settings: DetectSettings,
    profiles: MutableMapping[str, Profile] | None = None,
    *,
    contact_window_s: float = 900.0,
) -> Detector:
    """A detector with the built-in rules plus the configured extra rule folders."""
    rules = load_rules(
        settings.rules_dirs, disabled=settings.disabled_rules, experimental=settings.experimental_rules
    )
    return Detector(
        rules=rules,
        settings=settings,
        profiles=profiles if profiles is not None else {},
        contact_window_s=contact_window_s,
    )


def scan_events(
    events: Iterable[Event], settings: DetectSettings | None = None, rules: RuleSet | None = None
) -> list[Alert]:
    """Offline detection (``cadr scan``, rule tests): events in time order → alerts."""
    settings = settings or DetectSettings()
    detector = Detector(
        rules=rules
        or load_rules(
            settings.rules_dirs, disabled=settings.disabled_rules, experimental=settings.experimental_rules
        ),
        settings=settings,
    )
    return detector.process_many(sorted(events, key=lambda e: e.time))


def register(cadr_app: CadrApp) -> None:
    """Add the detect agent: events → alerts, with profiles in a Faust table."""
    from schemas.codec import decode_events, encode
    from schemas.errors import RecordError
    from streams.profiles import profile_table

    settings = cadr_app.settings
    # profiles live on the partition of their workload's events (see streams.profiles)
    profiles = profile_table(cadr_app)
    detector = build_detector(settings.detect, profiles, contact_window_s=settings.correlate.link_window_s)
    cadr_app.stages["detect"] = detector
    alerts_topic = cadr_app.topic("alerts")
    profiles_topic = cadr_app.topic("profiles")
    batch = settings.worker.batch_size
    within = settings.worker.batch_window_s

    health = cadr_app.health

    @cadr_app.agent(cadr_app.topic("events"), name="cadr.detect")
    async def detect(stream):
        async for values in stream.take(batch, within=within):
            futures = []
            for value in values:
                try:
                    events = decode_events(value)
                except RecordError:
                    # enrich already validated it; a bad record here is a bug upstream
                    log.exception("undecodable record on %s", settings.topic("events"))
                    continue
                for event in events:
                    for alert in detector.process(event):
                        # alerts of one cluster share a partition: stories cross workloads
                        key = alert.workload.cluster.encode() or b"-"
                        futures.append(await alerts_topic.send(key=key, value=encode(alert)))
            for key, profile in detector.baselines.take_changed().items():
                futures.append(await profiles_topic.send(key=key.encode(), value=encode(profile)))
            for fut in futures:
                await fut
            health.progress("cadr.detect", len(values))
