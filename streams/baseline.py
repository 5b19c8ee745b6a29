"""Behavioural baselines (application profiles): what is normal for one workload's container.

Learning runs on event time, so a replay or an offline scan learns exactly what the live
pipeline learned. Values are collapsed into patterns as they are learned (``/proc/*/status``,
``/tmp/tmp*``, ``-p *``) so profiles stay small and normal variation — new pod names, PIDs,
rotated temp files, scaled replicas — is still "seen". Rules reach profiles only through
:class:`ProfileView` (``baseline.seen_exec()`` and friends).

Patterns have one wildcard, ``*``, matching any run of characters (``/`` included). A value
is collapsed the same way when it is learned and when it is checked, so the two meet.

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

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from functools import lru_cache

import msgspec

from schemas.records import Event, EventKind, Profile, ProfileEdit, ProfileEditOp, ProfileStatus, Workload

__all__ = [
    "Baselines",
    "ProfileView",
    "apply_edit",
    "arg_shape",
    "dns_pattern",
    "egress_key",
    "ip_class",
    "parse_duration",
    "path_pattern",
    "profile_key",
]

# Bounds: a profile is one table value and one Kafka message; it must stay well under 1 MiB.
_MAX_FILES = 4000
_MAX_DIR_CHILDREN = 40
_MAX_EXECS = 512
_MAX_ARG_SHAPES = 64
_MAX_NET = 1000
_MAX_PORTS = 256
_MAX_PRIVS = 256
_MAX_ARG_LEN = 256

_NUM = re.compile(r"^\d+$")
# uuids, hashes, container ids, dates: long hex-and-dash runs with at least one digit
_HEXISH = re.compile(r"^(?=.*\d)[0-9a-fA-F-]{8,}$")
_DIGIT_RUN = re.compile(r"\d+")
_HEX_RUN = re.compile(r"[0-9a-fA-F][0-9a-fA-F-]{6,}[0-9a-fA-F]")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
# kubelet's atomic-writer directories of mounted secrets and config maps: ..2024_05_01_10_20_30.1234
_ATOMIC_DIR = re.compile(r"^\.\.\d{4}_\d\d_\d\d")
#: directories whose entries are ephemeral by nature: every name below them keeps a 3-character
#: stem only (``tmpk3j_x9ab`` -> ``tmp*``); random tails need not contain a digit to be random
_TEMP_ROOTS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/")
_TEMP_STEM = 3
#: a component with this many digits is an id or a timestamp: every digit run becomes ``*``
_DIGITS_FOR_ID = 5

_UID_OPS = frozenset({"setuid", "setresuid", "setreuid", "setfsuid"})
_GID_OPS = frozenset({"setgid", "setresgid", "setregid", "setfsgid"})
_NO_PROFILE = frozenset({EventKind.K8S_API, EventKind.SENSOR_HEALTH})
_LISTEN_KINDS = frozenset({EventKind.NET_LISTEN, EventKind.NET_ACCEPT})


def profile_key(event: Event) -> str:
    """Profiles are per workload (replicas share one) and per container name."""
    return f"{event.workload.key()}|{event.workload.container}"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


@lru_cache(maxsize=1024)
def parse_duration(text: str) -> float | None:
    """Seconds in ``text``: a bare number of seconds (``3600``) or units (``90s``, ``15m``,
    ``24h``, ``7d``, ``1h30m``). None when it is not a positive duration."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                return None
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            return None
    return seconds if seconds > 0 else None


def _hex_run(m: re.Match[str]) -> str:
    text = m.group()
    return "*" if any(c.isdigit() for c in text) else text


def _collapse_digits(part: str) -> str:
    """Collapse ids inside a name: hex runs (uuids, hashes) and, when many digits remain,
    every digit run (timestamps, counters)."""
    if sum(c.isdigit() for c in part) >= _DIGITS_FOR_ID:
        part = _HEX_RUN.sub(_hex_run, part)
        if sum(c.isdigit() for c in part) >= _DIGITS_FOR_ID:
            part = _DIGIT_RUN.sub("*", part)
    return part


@lru_cache(maxsize=65536)
def path_pattern(path: str) -> str:
    """Collapse the parts of a path that vary between runs into ``*``: numeric and hex
    components (``/proc/*/status``), id-like digit runs (``app-*-*-*.log``), kubelet's
    ``..<timestamp>`` directories, and any name under a temp directory (``/tmp/tmp*``)."""
    if not path.startswith("/"):
        return path
    parts = path.split("/")
    temp_from = len(parts)
    for root in _TEMP_ROOTS:
        if path.startswith(root):
            temp_from = root.count("/")
            break
    out = []
    for i, part in enumerate(parts):
        if not part or part == "*":
            out.append(part)
        elif _NUM.match(part) or _HEXISH.match(part):
            out.append("*")
        elif part.startswith("..") and _ATOMIC_DIR.match(part):
            out.append("..*")
        elif i >= temp_from:
            out.append(part if len(part) <= _TEMP_STEM else part[:_TEMP_STEM] + "*")
        else:
            out.append(_collapse_digits(part))
    return "/".join(out)


@lru_cache(maxsize=65536)
def _arg_token(arg: str) -> str:
    if len(arg) > _MAX_ARG_LEN:
        # long scripts and JSON blobs: the head is the shape, the tail is data
        arg = arg[:_MAX_ARG_LEN] + "*"
    if " " in arg:
        # an inline script (sh -c "..."): collapse word by word
        return " ".join(_arg_token(word) for word in arg.split())
    if _NUM.match(arg) or _HEXISH.match(arg):
        return "*"
    if arg.startswith("/"):
        return path_pattern(arg)
    if arg.startswith("-") and "=" in arg:
        flag, _, value = arg.partition("=")
        return f"{flag}={_arg_token(value)}" if value else arg
    if "." in arg:
        arg = _IPV4.sub("*", arg)
    return _collapse_digits(arg)


def arg_shape(args: list[str]) -> str:
    """The shape of an argument vector: argv[1:] with variable parts collapsed."""
    return " ".join(_arg_token(a) for a in args[1:64])


@lru_cache(maxsize=65536)
def dns_pattern(name: str) -> str:
    """A DNS name as profiles keep it: lower case, no trailing dot, digit runs collapsed
    (pod, node and reverse names vary with scaling: ``ip-*-*-*-*.ec2.internal``,
    ``web-*.web.default.svc.cluster.local``)."""
    return _DIGIT_RUN.sub("*", name.rstrip(".").lower())


@lru_cache(maxsize=65536)
def ip_class(text: str) -> str:
    """``private`` (cluster-internal or loopback), ``public`` or ``invalid``."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # not globally routable = inside the cluster or the VPC (RFC 1918, CGNAT pod ranges, ...)
    return "public" if ip.is_global else "private"


def egress_key(event: Event, names: Callable[[str], str | None] | None = None) -> str | None:
    """How a connection is remembered: ``<peer workload>:<port>`` when enrich knows the peer,
    ``private:<port>`` for other cluster-internal addresses (pod and service IPs churn with
    scaling), ``<dns name>:<port>`` for a public address the workload just resolved (cloud
    endpoints rotate their addresses), else ``<ip>:<port>``."""
    net = event.network
    if net is None or not net.dst_ip:
        return None
    port = net.dst_port
    if net.peer_workload:
        return f"{net.peer_workload}:{port}"
    cls = ip_class(net.dst_ip)
    if cls == "private":
        return f"private:{port}"
    if cls == "public" and names is not None:
        name = names(net.dst_ip)
        if name:
            return f"{name}:{port}"
    return f"{net.dst_ip}:{port}"


def _privilege_key(event: Event) -> str | None:
    priv = event.privilege
    if priv is None:
        return None
    if priv.op in _UID_OPS:
        return f"{priv.op}:{priv.new_uid}"
    if priv.op in _GID_OPS:
        return f"{priv.op}:{priv.new_gid}"
    return priv.op


def _own(value: str, wl: Workload) -> str:
    """Replace the pod's own name and IP in ``value``: they change with every replica."""
    pod = wl.pod
    if len(pod) >= 4 and pod in value:
        value = value.replace(pod, "*")
    ip = wl.pod_ip
    if ip and ip in value:
        value = value.replace(ip, "*")
    return value


def _exe_pattern(event: Event) -> str:
    p = event.process
    assert p is not None
    return path_pattern(_own(p.exe or p.comm, event.workload))


def _args_shape(event: Event) -> str:
    p = event.process
    assert p is not None
    wl = event.workload
    if (len(wl.pod) >= 4 or wl.pod_ip) and p.args:
        return arg_shape([_own(a, wl) for a in p.args])
    return arg_shape(p.args)


def _file_pattern(event: Event) -> str:
    f = event.file
    assert f is not None
    return path_pattern(_own(f.path, event.workload))


# --- matching ---------------------------------------------------------------------------


def _glob_re(pattern: str) -> str:
    return "(?:" + re.escape(pattern).replace(r"\*", ".*") + ")"


class _Patterns:
    """A set of patterns: exact values in a set, wildcard patterns in one compiled regex,
    answers for wildcard lookups cached (values repeat a lot)."""

    __slots__ = ("_cache", "_regex", "exact", "wild")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.exact: set[str] = set()
        self.wild: list[str] = []
        self._regex: re.Pattern[str] | None = None
        self._cache: dict[str, bool] = {}
        for p in patterns:
            self.add(p)

    def add(self, pattern: str) -> None:
        if "*" in pattern:
            self.wild.append(pattern)
            self._regex = None
            self._cache.clear()
        else:
            self.exact.add(pattern)

    def match(self, value: str) -> bool:
        if value in self.exact:
            return True
        if not self.wild:
            return False
        hit = self._cache.get(value)
        if hit is None:
            if self._regex is None:
                self._regex = re.compile("|".join(_glob_re(p) for p in self.wild), re.DOTALL)
            hit = self._regex.fullmatch(value) is not None
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[value] = hit
        return hit


class ProfileView:
    """The rule-facing view of one profile (see streams.rules.functions.BaselineView).

    ``names`` resolves a public IP to the DNS name this workload looked it up as;
    ``dns_warm`` is False until the workload's DNS answers have been seen by this process
    (after a restart, a connection to an address resolved before it is given the benefit
    of the doubt when the profile knows a named endpoint on that port)."""

    __slots__ = ("_args", "_execs", "_port_sets", "_sets", "dns_warm", "names", "profile", "revision")

    def __init__(
        self,
        profile: Profile,
        names: Callable[[str], str | None] | None = None,
        dns_warm: bool = True,
    ) -> None:
        self.profile = profile
        self.names = names
        self.dns_warm = dns_warm
        self.revision = profile.revision
        self._sets: dict[str, _Patterns] = {}
        self._execs: _Patterns | None = None
        self._args: dict[str, _Patterns] = {}
        self._port_sets: dict[str, set[int]] = {}

    # indexes, built lazily and kept in step by Baselines while it learns
    def _set(self, name: str) -> _Patterns:
        found = self._sets.get(name)
        if found is None:
            values = getattr(self.profile, name)
            found = self._sets[name] = _Patterns(str(v) for v in values)
        return found

    def _exec_set(self) -> _Patterns:
        if self._execs is None:
            self._execs = _Patterns(self.profile.execs)
        return self._execs

    def _shapes(self, exe: str) -> _Patterns | None:
        found = self._args.get(exe)
        if found is None:
            execs = self.profile.execs
            shapes = execs.get(exe)
            if shapes is None:
                matching = [v for k, v in execs.items() if "*" in k and _Patterns([k]).match(exe)]
                if not matching:
                    return None
                shapes = [s for v in matching for s in v]
            # an exe allowed without argument shapes allows any arguments
            found = self._args[exe] = _Patterns(shapes or ["*"])
        return found

    def ready(self) -> bool:
        return self.profile.status is not ProfileStatus.LEARNING

    def seen_exec(self, event: Event) -> bool:
        return event.process is None or self._exec_set().match(_exe_pattern(event))

    def seen_args(self, event: Event) -> bool:
        if event.process is None:
            return True
        shapes = self._shapes(_exe_pattern(event))
        return shapes is None or shapes.match(_args_shape(event))

    def seen_file(self, event: Event) -> bool:
        f = event.file
        if f is None:
            return True
        pattern = _file_pattern(event)
        # a write is seen only if a write was learned; a read if any access was
        return self._set("writes" if f.write else "files").match(pattern)

    def seen_egress(self, event: Event) -> bool:
        return self._egress_seen(event, lenient=True)

    def _egress_seen(self, event: Event, *, lenient: bool) -> bool:
        net = event.network
        if net is None or not net.dst_ip:
            return True
        egress = self._set("egress")
        port = net.dst_port
        if net.peer_workload or ip_class(net.dst_ip) == "private":
            # enrich names the peer only once it has seen the peer's own events: accept the
            # learned peer, or a private address learned when the peer was not yet known
            if net.peer_workload and egress.match(f"{net.peer_workload}:{port}"):
                return True
            if egress.match(f"private:{port}"):
                return True
            return lenient and not net.peer_workload and port in self._ports("peer")
        key = egress_key(event, self.names)
        if key is not None and egress.match(key):
            return True
        if egress.match(f"{net.dst_ip}:{port}"):
            return True
        return lenient and not self.dns_warm and port in self._ports("name")

    def _ports(self, kind: str) -> set[int]:
        """Ports of learned egress entries naming a peer workload (``peer``) or a DNS name."""
        found = self._port_sets.get(kind)
        if found is None:
            test = _is_peer_key if kind == "peer" else _is_name_key
            found = {int(e.rpartition(":")[2]) for e in self.profile.egress if test(e)}
            self._port_sets[kind] = found
        return found

    def seen_dns(self, event: Event) -> bool:
        d = event.dns
        return d is None or self._set("dns").match(dns_pattern(_own(d.query, event.workload)))

    def seen_listen(self, event: Event) -> bool:
        n = event.network
        return n is None or n.src_port in self.profile.listen_ports

    def seen_privilege(self, event: Event) -> bool:
        key = _privilege_key(event)
        return key is None or self._set("privileges").match(key)


def _is_peer_key(entry: str) -> bool:
    host, _, port = entry.rpartition(":")
    return port.isdigit() and "/" in host


def _is_name_key(entry: str) -> bool:
    host, _, port = entry.rpartition(":")
    return port.isdigit() and "/" not in host and host != "private" and ip_class(host) == "invalid"


# --- learning ---------------------------------------------------------------------------


class _Lru(OrderedDict[str, str]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)


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
        self._containers = _Lru(max_containers)
        # (profile key, ip) -> DNS name that answered it, for name-keyed egress
        self._resolved = _Lru(max_resolved)
        self._dns_warm: set[str] = set()
        # container id -> (profile key, end of its start-up learning): see _startup_learn
        self._startup: dict[str, tuple[str, int]] = {}

    # -- the hot path --

    def observe(self, event: Event) -> ProfileView | None:
        """Learn from ``event`` (while learning) and return the view rules evaluate against.

        Host processes and API events have no container profile (returns None)."""
        wl = event.workload
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
        elif profile.started_mid_run and (started or self._startup):
            self._startup_learn(key, profile, view, event, started)
        return view

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
        name = dns_pattern(_own(event.dns.query, event.workload))
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
            _merge(profile, template)
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
            profile = apply_edit(current, edit, workload_key=edit.workload_key, container=container)
            self.store[key] = profile
            self._views.pop(key, None)
            self._learning.discard(key)
            if profile.status is ProfileStatus.LEARNING:
                self._track_learning(key, profile)
            out[key] = profile
        return out


def _add(values: list[str], index: _Patterns, value: str, limit: int) -> bool:
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
        return _learn_exec(profile, view, _exe_pattern(event), _args_shape(event))
    if kind is EventKind.FILE_OPEN and event.file is not None:
        pattern = _file_pattern(event)
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
        name = dns_pattern(_own(event.dns.query, event.workload))
        return bool(name) and _add(profile.dns, view._set("dns"), name, _MAX_NET)
    if kind in _LISTEN_KINDS and event.network is not None:
        port = event.network.src_port
        if port and port not in profile.listen_ports and len(profile.listen_ports) < _MAX_PORTS:
            profile.listen_ports.append(port)
            return True
        return False
    if kind is EventKind.PRIVILEGE_CHANGE:
        pkey = _privilege_key(event)
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


# --- edits ------------------------------------------------------------------------------


def _copy(profile: Profile) -> Profile:
    return msgspec.convert(msgspec.to_builtins(profile), Profile)


def _merge(profile: Profile, entries: Profile) -> None:
    """Add every entry of ``entries`` to ``profile`` (exact values; no pattern reasoning)."""
    for exe, shapes in entries.execs.items():
        mine = profile.execs.setdefault(exe, [])
        mine.extend(s for s in (shapes or ["*"]) if s not in mine)
    for name in ("files", "writes", "egress", "dns", "privileges"):
        mine = getattr(profile, name)
        mine.extend(v for v in dict.fromkeys(getattr(entries, name)) if v not in mine)
    ports = profile.listen_ports
    ports.extend(p for p in dict.fromkeys(entries.listen_ports) if p not in ports)


def apply_edit(profile: Profile | None, edit: ProfileEdit, *, workload_key: str, container: str) -> Profile:
    """The profile after a user edit (pure: ``profile`` is not modified).

    ``allow`` adds the edit's entries to what was learned; ``replace`` installs the edit's
    profile; ``relearn`` starts learning again at the next event — as a partial profile, since
    the sensor does not re-report files the running containers already opened."""
    revision = profile.revision if profile is not None else 0
    if edit.op is ProfileEditOp.RELEARN:
        out = Profile(workload_key=workload_key, container=container, started_mid_run=True)
    elif edit.op is ProfileEditOp.REPLACE:
        if edit.profile is None:
            raise ValueError("a replace edit needs a profile")
        out = _copy(edit.profile)
        revision = max(revision, out.revision)
    else:
        # a new profile's learning window starts at the workload's first event
        out = Profile(workload_key=workload_key, container=container) if profile is None else _copy(profile)
        if edit.profile is not None:
            _merge(out, edit.profile)
    out.workload_key = workload_key
    out.container = container
    if edit.status is not None:
        out.status = edit.status
        if edit.status is not ProfileStatus.LEARNING and not out.learning_started:
            out.learning_started = out.learning_until = edit.time
    out.revision = revision + 1
    out.updated = max(out.updated, edit.time)
    return out
