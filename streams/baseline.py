"""Behavioural baselines (application profiles): what is normal for one workload's container.

Learning runs on event time, so a replay or an offline scan learns exactly what the live
pipeline learned. Values are collapsed into patterns as they are learned (``/proc/*/status``,
``/tmp/*``, ``-p *``) so profiles stay small and normal variation — new pod names, PIDs,
rotated temp files, scaled replicas — is still "seen". Rules reach profiles only through
:class:`ProfileView` (``baseline.seen_exec()`` and friends).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import lru_cache

from schemas.records import Event, EventKind, Profile, ProfileStatus

__all__ = [
    "Baselines",
    "ProfileView",
    "arg_shape",
    "egress_key",
    "path_pattern",
    "profile_key",
]

_MAX_FILES = 4000
_MAX_DIR_CHILDREN = 40
_MAX_ARG_SHAPES = 64

_NUM = re.compile(r"^\d+$")
_HEXISH = re.compile(r"^(?=.*\d)[0-9a-fA-F-]{8,}$")
# temp-style names: a stable stem plus a random-looking tail (tmpa8f3k2, sess_1a2b3c, foo.12345.log)
_RANDOM_TAIL = re.compile(r"^(?P<stem>[A-Za-z_.-]*?)(?P<tail>(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{5,})(?P<ext>\.[A-Za-z]{1,5})?$")
_TMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/")


def profile_key(event: Event) -> str:
    """Profiles are per workload (replicas share one) and per container name."""
    return f"{event.workload.key()}|{event.workload.container}"


@lru_cache(maxsize=65536)
def path_pattern(path: str) -> str:
    """Collapse the parts of a path that vary between runs into ``*``."""
    if not path.startswith("/"):
        return path
    parts = path.split("/")
    in_tmp = path.startswith(_TMP_DIRS)
    out = []
    for i, part in enumerate(parts):
        if _NUM.match(part) or _HEXISH.match(part):
            out.append("*")
        elif in_tmp and i == len(parts) - 1 and i >= 2 and _RANDOM_TAIL.match(part):
            m = _RANDOM_TAIL.match(part)
            assert m is not None
            out.append(f"{m.group('stem')}*{m.group('ext') or ''}")
        else:
            out.append(part)
    return "/".join(out)


@lru_cache(maxsize=65536)
def _arg_token(arg: str) -> str:
    if _NUM.match(arg) or _HEXISH.match(arg):
        return "*"
    if arg.startswith("/"):
        return path_pattern(arg)
    if "=" in arg and arg.startswith("-"):
        flag, _, value = arg.partition("=")
        return f"{flag}={_arg_token(value)}" if value else arg
    return arg


def arg_shape(args: list[str]) -> str:
    """The shape of an argument vector: argv[1:] with variable parts collapsed."""
    return " ".join(_arg_token(a) for a in args[1:64])


def egress_key(event: Event) -> str | None:
    """How a connection is remembered: the peer workload, else ``private:<port>`` for
    cluster-internal addresses (pod IPs churn with scaling), else ``ip:port``."""
    net = event.network
    if net is None or not net.dst_ip:
        return None
    if net.peer_workload:
        return f"{net.peer_workload}:{net.dst_port}"
    try:
        ip = ipaddress.ip_address(net.dst_ip)
    except ValueError:
        return f"{net.dst_ip}:{net.dst_port}"
    if ip.is_private or ip.is_loopback:
        return f"private:{net.dst_port}"
    return f"{net.dst_ip}:{net.dst_port}"


def _privilege_key(event: Event) -> str | None:
    priv = event.privilege
    if priv is None:
        return None
    if priv.op in {"setuid", "setresuid", "setreuid"}:
        return f"{priv.op}:{priv.new_uid}"
    if priv.op in {"setgid", "setresgid", "setregid"}:
        return f"{priv.op}:{priv.new_gid}"
    return priv.op


def _matches(patterns: list[str], value: str) -> bool:
    if value in patterns:
        return True
    return any(("*" in p or "?" in p) and fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass
class ProfileView:
    """The rule-facing view of one profile (see streams.rules.functions.BaselineView)."""

    profile: Profile

    def ready(self) -> bool:
        return self.profile.status is not ProfileStatus.LEARNING

    def seen_exec(self, event: Event) -> bool:
        p = event.process
        return p is None or _matches(list(self.profile.execs), path_pattern(p.exe or p.comm))

    def seen_args(self, event: Event) -> bool:
        p = event.process
        if p is None:
            return True
        exe = path_pattern(p.exe or p.comm)
        shapes = self.profile.execs.get(exe)
        if shapes is None:
            shapes = next((v for k, v in self.profile.execs.items() if fnmatch.fnmatchcase(exe, k)), None)
        return shapes is None or _matches(shapes, arg_shape(p.args))

    def seen_file(self, event: Event) -> bool:
        f = event.file
        return f is None or _matches(self.profile.files, path_pattern(f.path))

    def seen_egress(self, event: Event) -> bool:
        key = egress_key(event)
        return key is None or _matches(self.profile.egress, key)

    def seen_dns(self, event: Event) -> bool:
        d = event.dns
        return d is None or _matches(self.profile.dns, d.query.rstrip(".").lower())

    def seen_listen(self, event: Event) -> bool:
        n = event.network
        return n is None or n.src_port in self.profile.listen_ports

    def seen_privilege(self, event: Event) -> bool:
        key = _privilege_key(event)
        return key is None or _matches(self.profile.privileges, key)


class Baselines:
    """Learns and serves profiles. ``store`` is any mapping (a Faust table in the worker, a
    dict in tests and ``cadr scan``); it is written only when a profile actually changes, so
    the changelog stays quiet once learning is done."""

    def __init__(
        self,
        store: MutableMapping[str, Profile],
        *,
        learning_window_ns: int,
        window_label: str = "cadr.dev/learning-window",
    ) -> None:
        self.store = store
        self.learning_window_ns = learning_window_ns
        self.window_label = window_label
        self.changed: dict[str, Profile] = {}

    def _window(self, event: Event) -> int:
        label = event.workload.labels.get(self.window_label)
        if label:
            try:
                return int(float(label) * 1e9)
            except ValueError:
                pass
        return self.learning_window_ns

    def observe(self, event: Event) -> ProfileView | None:
        """Learn from ``event`` (while learning) and return the view rules evaluate against.

        Host processes and API events have no container profile (returns None)."""
        if event.workload.is_host or event.kind in (EventKind.K8S_API, EventKind.SENSOR_HEALTH):
            return None
        key = profile_key(event)
        profile = self.store.get(key)
        if profile is None:
            # A profile that starts on anything but a process start missed the container's
            # beginning: it will be "partial" rather than "complete" when learning ends.
            profile = Profile(
                workload_key=event.workload.key(),
                container=event.workload.container,
                learning_started=event.time,
                learning_until=event.time + self._window(event),
                updated=event.time,
                status=ProfileStatus.LEARNING,
            )
            profile.privileges = [] if event.kind is EventKind.PROCESS_EXEC else ["<partial>"]
            self._save(key, profile)
        if profile.status is ProfileStatus.LEARNING:
            if event.time >= profile.learning_until:
                partial = "<partial>" in profile.privileges
                profile.privileges = [p for p in profile.privileges if p != "<partial>"]
                profile.status = ProfileStatus.PARTIAL if partial else ProfileStatus.COMPLETE
                profile.updated = event.time
                profile.revision += 1
                self._save(key, profile)
            elif self._learn(profile, event):
                profile.updated = event.time
                profile.revision += 1
                self._save(key, profile)
        return ProfileView(profile)

    def _save(self, key: str, profile: Profile) -> None:
        self.store[key] = profile
        self.changed[key] = profile

    def take_changed(self) -> dict[str, Profile]:
        """Profiles changed since the last call (for snapshots to cadr.profiles)."""
        changed, self.changed = self.changed, {}
        return changed

    @staticmethod
    def _learn(profile: Profile, event: Event) -> bool:
        kind = event.kind
        if kind is EventKind.PROCESS_EXEC and event.process is not None:
            p = event.process
            exe = path_pattern(p.exe or p.comm)
            shape = arg_shape(p.args)
            shapes = profile.execs.get(exe)
            if shapes is None:
                profile.execs[exe] = [shape]
                return True
            if not _matches(shapes, shape):
                if len(shapes) >= _MAX_ARG_SHAPES:
                    if "*" not in shapes:
                        shapes.append("*")
                        return True
                    return False
                shapes.append(shape)
                return True
            return False
        if kind is EventKind.FILE_OPEN and event.file is not None:
            return _learn_path(profile.files, path_pattern(event.file.path))
        if kind is EventKind.NET_CONNECT:
            key = egress_key(event)
            if key and not _matches(profile.egress, key):
                profile.egress.append(key)
                return True
            return False
        if kind is EventKind.DNS_QUERY and event.dns is not None:
            name = event.dns.query.rstrip(".").lower()
            if name and not _matches(profile.dns, name):
                profile.dns.append(name)
                return True
            return False
        if kind in (EventKind.NET_LISTEN, EventKind.NET_ACCEPT) and event.network is not None:
            port = event.network.src_port
            if port and port not in profile.listen_ports:
                profile.listen_ports.append(port)
                return True
            return False
        if kind is EventKind.PRIVILEGE_CHANGE:
            pkey = _privilege_key(event)
            if pkey and not _matches(profile.privileges, pkey):
                profile.privileges.append(pkey)
                return True
        return False


def _learn_path(files: list[str], pattern: str) -> bool:
    if _matches(files, pattern):
        return False
    directory = pattern.rsplit("/", 1)[0]
    siblings = [f for f in files if f.rsplit("/", 1)[0] == directory]
    if len(siblings) >= _MAX_DIR_CHILDREN or len(files) >= _MAX_FILES:
        # too many distinct names in one directory: remember the directory instead
        files[:] = [f for f in files if f.rsplit("/", 1)[0] != directory]
        files.append(f"{directory}/*")
        return True
    files.append(pattern)
    return True
