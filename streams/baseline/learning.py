"""Learning profiles from events, on event time, and serving their views.

Learning runs on event time, so a replay or an offline scan learns exactly what the live pipeline learned.

File opens and the sensor's in-kernel filter: the eBPF sensor reports a read-open only the first
time a container opens that file (per cgroup and inode) and every write-open. Profiles therefore
record presence, never counts; writes are kept apart (``writes``) because a read learned first
must not hide a later write, and the sensor never hides writes. A file a running container read
before learning began is not reported again, so a profile that starts on a running container is
marked ``started_mid_run`` and ends as ``partial`` — until a container of the workload is seen
starting, whose start-up is then learned. Every new replica (new cgroup) re-reports its reads,
which is how start-up files reach a shared profile.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

from schemas.records import Event, EventKind, Profile, ProfileEdit, ProfileEditOp, ProfileStatus, Release
from streams.baseline.edits import apply_edit, merge_entries
from streams.baseline.patterns import (
    Patterns,
    args_shape,
    dns_pattern,
    egress_key,
    exe_pattern,
    file_pattern,
    ip_class,
    own,
    parse_duration,
    privilege_key,
)
from streams.baseline.release import ReleaseView, Rollout, learn_change, rollout_of
from streams.baseline.view import ProfileView
from streams.lru import Lru

__all__ = ["Baselines"]

# Bounds: a profile is one table value and one Kafka message; it must stay well under 1 MiB.
_MAX_FILES = 4000
_MAX_DIR_CHILDREN = 40
_MAX_EXECS = 512
_MAX_ARG_SHAPES = 64
_MAX_NET = 1000
_MAX_PORTS = 256
_MAX_PRIVS = 256

_NO_PROFILE = frozenset({EventKind.K8S_API, EventKind.SENSOR_HEALTH})
_LISTEN_KINDS = frozenset({EventKind.NET_LISTEN, EventKind.NET_ACCEPT})


class Baselines:
    """Learns and serves profiles. ``store`` is any mapping (a Faust table in the worker, a
    dict in tests and ``cadr scan``). A new profile is written at once; later changes are
    made in place and written by :meth:`take_changed` once per batch, so the changelog gets
    one message per changed profile per batch (and none once learning is done)."""

    def __init__(
        self,
        store: MutableMapping[str, Profile],
        *,
        learning_window_ns: int,
        window_label: str = "cadr.dev/learning-window",
        startup_grace_ns: int = 300 * 10**9,
        max_containers: int = 200_000,
        max_resolved: int = 200_000,
    ) -> None:
        self.store = store
        self.learning_window_ns = learning_window_ns
        self.window_label = window_label
        self.startup_grace_ns = startup_grace_ns
        self.changed: dict[str, Profile] = {}
        #: the newest event time seen: learning of quiet workloads ends by it
        self.watermark = 0
        self._views: dict[str, ProfileView] = {}
        self._learning: set[str] = set()
        self._next_due = 0
        # container ids this process has seen, to tell a container start (its first event is
        # an exec) from a container that was already running
        self._containers: Lru[str, str] = Lru(max_containers)
        # (profile key, ip) -> DNS name that answered it, for name-keyed egress
        self._resolved: Lru[str, str] = Lru(max_resolved)
        self._dns_warm: set[str] = set()
        # container id -> (profile key, end of its start-up learning): see _startup_learn
        self._startup: dict[str, tuple[str, int]] = {}
        # workload key -> its latest rollout seen in the audit stream (streams.baseline.release)
        self._rollouts: Lru[str, Rollout] = Lru(10_000)
        self._release_views: dict[str, ReleaseView] = {}

    # -- the hot path --

    def observe(self, event: Event) -> ProfileView | None:
        """Learn from ``event`` (while learning) and return the view rules evaluate against.

        Host processes and API events have no container profile (returns None)."""
        wl = event.workload
        if event.kind is EventKind.K8S_API:
            self._note_rollout(event)
            return None
        if event.kind in _NO_PROFILE or wl.is_host:
            return None
        if event.time > self.watermark:
            self.watermark = event.time
        key = f"{wl.key()}|{wl.container}"
        started = self._container_started(event)
        if event.kind is EventKind.DNS_QUERY and event.dns is not None and event.dns.answers:
            self._remember_answers(key, event)
        profile = self.store.get(key)
        if profile is None:
            profile = self._create(key, event, started)
        view = self._views.get(key)
        if view is None or view.profile is not profile or view.revision != profile.revision:
            view = self._views[key] = ProfileView(profile, self._resolver(key), key in self._dns_warm)
        elif not view.dns_warm and key in self._dns_warm:
            view.dns_warm = True
        if profile.status is ProfileStatus.LEARNING:
            self._learn_event(key, profile, view, event, started)
            if wl.image and wl.image != profile.image and profile.status is ProfileStatus.LEARNING:
                profile.image = wl.image  # learned on the newest image seen while learning
                self._touch(key, profile, view, event.time)
        elif profile.started_mid_run and (started or self._startup):
            self._startup_learn(key, profile, view, event, started)
        if wl.image and profile.status is not ProfileStatus.LEARNING and wl.image != profile.image:
            if not profile.image:  # a profile from before images were kept: this is its image
                profile.image = wl.image
                self._touch(key, profile, view, event.time)
            else:
                return self._release(key, profile, view, event)
        return view

    # -- release drift (streams.baseline.release) --

    def _release(self, key: str, profile: Profile, view: ProfileView, event: Event) -> ReleaseView:
        """The view of an event of an image the profile was not learned on: the release's changes
        learnt, the change this event shows told to the rules."""
        wl = event.workload
        release = profile.release
        if release is None or release.image != wl.image:
            if release is None:
                release = Release(image=wl.image, previous_image=profile.image, since=event.time)
            else:
                release.image = wl.image  # a newer release still compared with the accepted profile
                release.by, release.rolled_out = "", 0
            rollout = self._rollouts.get(wl.key())
            if rollout is not None and wl.image in rollout.images:
                release.by, release.rolled_out = rollout.user, rollout.time
            profile.release = release
            self._touch(key, profile, None, event.time)
        rview = self._release_views.get(key)
        if rview is None or rview.release is not release or rview.revision != profile.revision:
            rview = self._release_view(key, profile, release, view)
        change = learn_change(release, rview, event)
        if change:
            self._touch(key, profile, None, event.time)
            rview = self._release_view(key, profile, release, view)
        rview.change = change
        return rview

    def _release_view(self, key: str, profile: Profile, release: Release, view: ProfileView) -> ReleaseView:
        rview = ReleaseView(profile, release, names=view.names, dns_warm=view.dns_warm)
        rview.revision = profile.revision
        self._release_views[key] = rview
        return rview

    def _note_rollout(self, event: Event) -> None:
        """Remember who rolled out which images of a workload; name them in a release already told."""
        rollout = rollout_of(event)
        if rollout is None:
            return
        wkey = event.workload.key()
        self._rollouts.put(wkey, rollout)
        containers = event.audit.request.get("containers") if event.audit is not None else None
        for c in containers if isinstance(containers, list) else []:
            key = f"{wkey}|{c.get('name', '') if isinstance(c, dict) else ''}"
            profile = self.changed.get(key) or self.store.get(key)
            release = profile.release if profile is not None else None
            if (
                profile is not None
                and release is not None
                and release.image in rollout.images
                and not release.by
            ):
                release.by, release.rolled_out = rollout.user, rollout.time
                self._touch(key, profile, None, event.time)

    def _startup_learn(
        self, key: str, profile: Profile, view: ProfileView, event: Event, started: bool
    ) -> None:
        """Complete a partial profile with the start-up of the first container seen starting.

        Every workload already running when cadr was installed ends learning as ``partial``:
        its start-up (entrypoint scripts, config rendering, privilege drops) was never seen,
        and would alert at the first rollout or scale-up. So the first container of such a
        workload seen starting is learned from for ``startup_grace_ns``; then the profile is
        complete."""
        cid = event.workload.container_id
        if started:
            self._startup[cid] = (key, event.time + self.startup_grace_ns)
        entry = self._startup.get(cid)
        if entry is None:
            return
        if event.time <= entry[1]:
            if _learn(profile, view, event):
                self._touch(key, profile, view, event.time)
        else:
            self._end_startup(cid, event.time)

    def _end_startup(self, cid: str, time: int) -> None:
        key, _ = self._startup.pop(cid)
        profile = self.store.get(key)
        if profile is None or not profile.started_mid_run:
            return
        if not any(k == key for k, _ in self._startup.values()):
            profile.started_mid_run = False
            if profile.status is ProfileStatus.PARTIAL:
                profile.status = ProfileStatus.COMPLETE
            self._touch(key, profile, None, time)

    def _container_started(self, event: Event) -> bool:
        cid = event.workload.container_id
        if not cid or cid in self._containers:
            return False
        self._containers.put(cid, "")
        return event.kind is EventKind.PROCESS_EXEC

    def _resolver(self, key: str) -> Callable[[str], str | None]:
        resolved = self._resolved

        def names(ip: str) -> str | None:
            return resolved.get(f"{key}\x1f{ip}")

        return names

    def _remember_answers(self, key: str, event: Event) -> None:
        assert event.dns is not None
        name = dns_pattern(own(event.dns.query, event.workload))
        for answer in event.dns.answers:
            if ip_class(answer) == "public":
                self._resolved.put(f"{key}\x1f{answer}", name)
        self._dns_warm.add(key)

    def _window(self, event: Event) -> int:
        label = event.workload.labels.get(self.window_label)
        if label:
            seconds = parse_duration(label)
            if seconds is not None:
                return int(seconds * 1e9)
        return self.learning_window_ns

    def _create(self, key: str, event: Event, started: bool) -> Profile:
        wl = event.workload
        profile = Profile(
            workload_key=wl.key(),
            container=wl.container,
            learning_started=event.time,
            learning_until=event.time + self._window(event),
            updated=event.time,
            status=ProfileStatus.LEARNING,
            started_mid_run=not started,
        )
        # entries allowed for the workload before this container was ever seen
        template = self.store.get(f"{wl.key()}|*")
        if template is not None:
            merge_entries(profile, template)
        self.store[key] = profile
        self.changed[key] = profile
        return profile

    def _learn_event(
        self, key: str, profile: Profile, view: ProfileView, event: Event, started: bool
    ) -> None:
        self._track_learning(key, profile)
        if not profile.learning_started:
            # created by an edit before any event: the window starts now
            profile.learning_started = event.time
            profile.learning_until = event.time + self._window(event)
            self._touch(key, profile, view, event.time)
        if event.time >= profile.learning_until:
            self._finish(key, profile, event.time)
            return
        changed = False
        if started and profile.started_mid_run:
            # a container of this workload started under observation: start-up is covered
            profile.started_mid_run = False
            changed = True
        if _learn(profile, view, event) or changed:
            self._touch(key, profile, view, event.time)

    def _touch(self, key: str, profile: Profile, view: ProfileView | None, time: int) -> None:
        profile.updated = max(profile.updated, time)
        profile.revision += 1
        if view is not None:
            view.revision = profile.revision
        self.changed[key] = profile

    def _finish(self, key: str, profile: Profile, time: int) -> None:
        profile.status = ProfileStatus.PARTIAL if profile.started_mid_run else ProfileStatus.COMPLETE
        self._touch(key, profile, None, max(time, profile.learning_until))
        self._learning.discard(key)

    def _track_learning(self, key: str, profile: Profile) -> None:
        if key not in self._learning:
            self._learning.add(key)
            if profile.learning_until and (not self._next_due or profile.learning_until < self._next_due):
                self._next_due = profile.learning_until

    def finish_due(self, now_ns: int | None = None) -> None:
        """End learning of profiles whose window passed by ``now_ns`` (default: the newest
        event time seen), so a workload that went quiet still becomes complete."""
        now = self.watermark if now_ns is None else now_ns
        for cid, (_, until) in list(self._startup.items()):
            if until < now:
                self._end_startup(cid, now)
        if not self._next_due or now < self._next_due:
            return
        next_due = 0
        for key in list(self._learning):
            profile = self.store.get(key)
            if profile is None or profile.status is not ProfileStatus.LEARNING:
                self._learning.discard(key)
            elif profile.learning_started and profile.learning_until <= now:
                self._finish(key, profile, now)
            elif profile.learning_until and (not next_due or profile.learning_until < next_due):
                next_due = profile.learning_until
        self._next_due = next_due

    def take_changed(self) -> dict[str, Profile]:
        """Write the profiles changed since the last call to the store (one write each) and
        return them, for the snapshot on ``cadr.profiles``. Call once per batch."""
        self.finish_due()
        changed, self.changed = self.changed, {}
        for key, profile in changed.items():
            self.store[key] = profile
        return changed

    # -- user edits --

    def profile_keys(self, workload_key: str) -> list[str]:
        """Store keys of every container profile of a workload (a scan: edits only)."""
        prefix = f"{workload_key}|"
        return [k for k in self.store if k.startswith(prefix)]

    def apply_edit(self, edit: ProfileEdit) -> dict[str, Profile]:
        """Apply a user edit, write the result to the store at once and return the changed
        profiles by key (to publish). ``edit.container == ""`` applies to every container
        profile of the workload; with none yet, to a template that new containers start from."""
        if edit.container:
            keys = [f"{edit.workload_key}|{edit.container}"]
        else:
            keys = self.profile_keys(edit.workload_key) or [f"{edit.workload_key}|*"]
        out: dict[str, Profile] = {}
        for key in keys:
            container = key.rpartition("|")[2]
            current = self.changed.pop(key, None) or self.store.get(key)
            if current is None and edit.op is ProfileEditOp.ACCEPT_RELEASE:
                continue  # no profile, no release to accept
            profile = apply_edit(current, edit, workload_key=edit.workload_key, container=container)
            self.store[key] = profile
            self._views.pop(key, None)
            self._release_views.pop(key, None)
            self._learning.discard(key)
            if profile.status is ProfileStatus.LEARNING:
                self._track_learning(key, profile)
            out[key] = profile
        return out


def _add(values: list[str], index: Patterns, value: str, limit: int) -> bool:
    if index.match(value) or len(values) >= limit:
        return False
    values.append(value)
    index.add(value)
    return True


def _learn(profile: Profile, view: ProfileView, event: Event) -> bool:
    """Add what ``event`` shows to ``profile`` (and its view's indexes); True if it changed."""
    kind = event.kind
    if kind is EventKind.PROCESS_EXEC and event.process is not None:
        if event.process.tty:
            # an interactive session (kubectl exec -it) is a person, not the application
            return False
        return _learn_exec(profile, view, exe_pattern(event), args_shape(event))
    if kind is EventKind.FILE_OPEN and event.file is not None:
        pattern = file_pattern(event)
        changed = _learn_path(profile, view, "files", pattern)
        if event.file.write:
            changed = _learn_path(profile, view, "writes", pattern) or changed
        return changed
    if kind is EventKind.NET_CONNECT:
        if view._egress_seen(event, lenient=False):
            return False
        key = egress_key(event, view.names)
        if key is None or not _add(profile.egress, view._set("egress"), key, _MAX_NET):
            return False
        view._port_sets.clear()
        return True
    if kind is EventKind.DNS_QUERY and event.dns is not None:
        name = dns_pattern(own(event.dns.query, event.workload))
        return bool(name) and _add(profile.dns, view._set("dns"), name, _MAX_NET)
    if kind in _LISTEN_KINDS and event.network is not None:
        port = event.network.src_port
        if port and port not in profile.listen_ports and len(profile.listen_ports) < _MAX_PORTS:
            profile.listen_ports.append(port)
            return True
        return False
    if kind is EventKind.PRIVILEGE_CHANGE:
        pkey = privilege_key(event)
        return pkey is not None and _add(profile.privileges, view._set("privileges"), pkey, _MAX_PRIVS)
    return False


def _learn_exec(profile: Profile, view: ProfileView, exe: str, shape: str) -> bool:
    execs = view._exec_set()
    if not execs.match(exe):
        if len(profile.execs) >= _MAX_EXECS:
            # too many programs: remember the directory, with any arguments
            exe = exe.rsplit("/", 1)[0] + "/*"
            profile.execs[exe] = ["*"]
        else:
            profile.execs[exe] = [shape]
        execs.add(exe)
        view._args.clear()
        return True
    shapes_index = view._shapes(exe)
    if shapes_index is None or shapes_index.match(shape):
        return False
    shapes = profile.execs.get(exe)
    if shapes is None:
        # matched a wildcard exe pattern; its shapes are the wildcard's
        return False
    if len(shapes) >= _MAX_ARG_SHAPES:
        shapes.append("*")
        shapes_index.add("*")
        return True
    shapes.append(shape)
    shapes_index.add(shape)
    return True


def _learn_path(profile: Profile, view: ProfileView, name: str, pattern: str) -> bool:
    index = view._set(name)
    if index.match(pattern):
        return False
    files: list[str] = getattr(profile, name)
    directory = pattern.rsplit("/", 1)[0]
    prefix = directory + "/"
    siblings = sum(1 for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :])
    if siblings >= _MAX_DIR_CHILDREN or len(files) >= _MAX_FILES:
        # too many distinct names in one directory: remember the directory instead
        files[:] = [f for f in files if not (f.startswith(prefix) and "/" not in f[len(prefix) :])]
        files.append(prefix + "*")
        view._sets.pop(name, None)
        return True
    files.append(pattern)
    index.add(pattern)
    return True
