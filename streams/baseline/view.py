"""The read-only view of one profile that rules evaluate against (``baseline.seen_exec()`` and friends).

Rules reach profiles only through :class:`ProfileView` (see :class:`streams.rules.functions.BaselineView`).
Its indexes are built lazily; :mod:`streams.baseline.learning` keeps them in step while it learns (it is
the one other user of the underscored members).
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.records import Event, Profile, ProfileStatus
from streams.baseline.patterns import (
    Patterns,
    args_shape,
    dns_pattern,
    egress_key,
    exe_pattern,
    file_pattern,
    ip_class,
    own,
    privilege_key,
)

__all__ = ["ProfileView"]


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
        self._sets: dict[str, Patterns] = {}
        self._execs: Patterns | None = None
        self._args: dict[str, Patterns] = {}
        self._port_sets: dict[str, set[int]] = {}

    # indexes, built lazily and kept in step by Baselines while it learns
    def _set(self, name: str) -> Patterns:
        found = self._sets.get(name)
        if found is None:
            values = getattr(self.profile, name)
            found = self._sets[name] = Patterns(str(v) for v in values)
        return found

    def _exec_set(self) -> Patterns:
        if self._execs is None:
            self._execs = Patterns(self.profile.execs)
        return self._execs

    def _shapes(self, exe: str) -> Patterns | None:
        found = self._args.get(exe)
        if found is None:
            execs = self.profile.execs
            shapes = execs.get(exe)
            if shapes is None:
                matching = [v for k, v in execs.items() if "*" in k and Patterns([k]).match(exe)]
                if not matching:
                    return None
                shapes = [s for v in matching for s in v]
            # an exe allowed without argument shapes allows any arguments
            found = self._args[exe] = Patterns(shapes or ["*"])
        return found

    def ready(self) -> bool:
        return self.profile.status is not ProfileStatus.LEARNING

    def seen_exec(self, event: Event) -> bool:
        return event.process is None or self._exec_set().match(exe_pattern(event))

    def seen_args(self, event: Event) -> bool:
        if event.process is None:
            return True
        shapes = self._shapes(exe_pattern(event))
        return shapes is None or shapes.match(args_shape(event))

    def seen_file(self, event: Event) -> bool:
        f = event.file
        if f is None:
            return True
        pattern = file_pattern(event)
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
        return d is None or self._set("dns").match(dns_pattern(own(d.query, event.workload)))

    def seen_listen(self, event: Event) -> bool:
        n = event.network
        return n is None or n.src_port in self.profile.listen_ports

    def seen_privilege(self, event: Event) -> bool:
        key = privilege_key(event)
        return key is None or self._set("privileges").match(key)

    # release drift (see streams.baseline.release.ReleaseView): a container of the profile's own image
    def release_changed(self) -> bool:
        return False

    def release_previous(self) -> str:
        return ""

    def release_rollout(self) -> str:
        return ""

    def release_changes(self) -> str:
        return ""


def _is_peer_key(entry: str) -> bool:
    host, _, port = entry.rpartition(":")
    return port.isdigit() and "/" in host


def _is_name_key(entry: str) -> bool:
    host, _, port = entry.rpartition(":")
    return port.isdigit() and "/" not in host and host != "private" and ip_class(host) == "invalid"
