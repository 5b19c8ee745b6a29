"""Release drift: a workload's new image compared with the profile of the release it replaces.

A profile remembers the image it was learned on (``Profile.image``). When events of the same workload's
container come from another image (the pod watch names each container's image), that image is a
*release* of the workload (``Profile.release``): its behaviour is compared with the previous release's
profile, and what it does that the previous release never did — new programs or arguments, destinations,
DNS names, listening ports, privilege changes — is learned into the release, each change once. The
anomaly rules see the profile and the release's changes together, so a release does not raise a storm of
anomalies; instead rule CADR-REL-0001 tells each change as one ``behaviour changed with release`` notice
(folded into one alert), saying which image replaced which, and who rolled it out when the audit stream
showed the update of the workload's pod template. A person accepts the release in one edit
(``cadr profiles accept-release``, :func:`streams.baseline.edits.apply_edit`): its changes join the
profile, and the new image becomes its image.

What a new release does that no anomaly rule forgives (a miner, a read of the shadow file ...) still
alerts as usual, and the story of those alerts carries the notice, so it says which release brought it.
"""

from __future__ import annotations

import datetime
import posixpath
from dataclasses import dataclass

from schemas.records import Event, EventKind, Profile, Release
from streams.baseline.edits import merge_entries, release_entries
from streams.baseline.patterns import (
    args_shape,
    dns_pattern,
    egress_key,
    exe_pattern,
    own,
    privilege_key,
)
from streams.baseline.view import ProfileView

__all__ = ["ReleaseView", "Rollout", "learn_change", "release_profile", "rollout_of", "short_image"]

_WORKLOAD_RESOURCES = frozenset({"deployments", "statefulsets", "daemonsets"})
_ROLLOUT_VERBS = frozenset({"patch", "update", "create"})
# bounds: a release is part of its profile's record
_MAX_EXECS = 256
_MAX_NET = 500
_MAX_PORTS = 128
_MAX_PRIVS = 128
#: changes named in a notice; beyond, counted
_NAMED = 4


@dataclass(frozen=True)
class Rollout:
    """An update of a workload's pod template, from the audit stream: who, when, which images."""

    user: str
    time: int
    images: tuple[str, ...]


def rollout_of(event: Event) -> Rollout | None:
    """The rollout an audit event is (a create/update/patch of a Deployment, StatefulSet or DaemonSet
    with container images, that the API server accepted), or None."""
    a = event.audit
    if a is None or a.resource not in _WORKLOAD_RESOURCES or a.verb not in _ROLLOUT_VERBS:
        return None
    if a.subresource or a.response_code >= 400 or a.stage not in ("ResponseComplete", ""):
        return None
    images = a.request.get("images") if isinstance(a.request, dict) else None
    if not isinstance(images, list) or not images:
        return None
    return Rollout(user=a.impersonated_user or a.user, time=event.time, images=tuple(str(i) for i in images))


def short_image(image: str, other: str) -> str:
    """``image`` as a person would say it next to ``other``: the tag alone when both are tags of one
    repository (``3.3.1`` next to ``ghcr.io/acme/ingress:3.4.0``), else in full."""
    repo, sep, tag = image.rpartition(":")
    other_repo, other_sep, _ = other.rpartition(":")
    if sep and other_sep and repo == other_repo and "/" not in tag:
        return tag
    return image


def _clock(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).strftime("%H:%M UTC")


def release_profile(profile: Profile) -> Profile:
    """The profile and its release's changes together: what the anomaly rules compare a release with."""
    merged = Profile(
        workload_key=profile.workload_key,
        container=profile.container,
        status=profile.status,
        revision=profile.revision,
        execs={k: list(v) for k, v in profile.execs.items()},
        files=list(profile.files),
        writes=list(profile.writes),
        egress=list(profile.egress),
        dns=list(profile.dns),
        listen_ports=list(profile.listen_ports),
        privileges=list(profile.privileges),
        image=profile.image,
    )
    if profile.release is not None:
        merge_entries(merged, release_entries(profile.release))
    return merged


def learn_change(release: Release, view: ProfileView, event: Event) -> str:
    """Learn what ``event`` shows that neither the previous release (nor this one so far) did; a phrase
    saying it ("runs a new program /usr/bin/x"), or "" when nothing is new. ``view`` sees the profile
    and the release's changes together."""
    kind = event.kind
    if kind is EventKind.PROCESS_EXEC and event.process is not None:
        if event.process.tty:  # a person in a terminal is not the release's behaviour
            return ""
        exe, shape = exe_pattern(event), args_shape(event)
        if not view.seen_exec(event):
            if len(release.execs) < _MAX_EXECS:
                release.execs[exe] = [shape]
            return f"runs a new program {exe}"
        if not view.seen_args(event):
            shapes = release.execs.setdefault(exe, [])
            if len(shapes) < _MAX_EXECS:
                shapes.append(shape)
            return f"runs {posixpath.basename(exe)} with new arguments"
        return ""
    if kind is EventKind.NET_CONNECT and event.network is not None and not view.seen_egress(event):
        key = egress_key(event, view.names) or f"{event.network.dst_ip}:{event.network.dst_port}"
        _add(release.egress, key, _MAX_NET)
        return f"connects to {key}"
    if kind is EventKind.DNS_QUERY and event.dns is not None and not view.seen_dns(event):
        name = dns_pattern(own(event.dns.query, event.workload))
        _add(release.dns, name, _MAX_NET)
        return f"looks up {event.dns.query}"
    if kind in (EventKind.NET_LISTEN, EventKind.NET_ACCEPT) and event.network is not None:
        port = event.network.src_port
        if port and not view.seen_listen(event):
            if len(release.listen_ports) < _MAX_PORTS:
                release.listen_ports.append(port)
            return f"listens on port {port}"
        return ""
    if kind is EventKind.PRIVILEGE_CHANGE and not view.seen_privilege(event):
        pkey = privilege_key(event)
        if pkey:
            _add(release.privileges, pkey, _MAX_PRIVS)
            return f"calls {pkey}"
    return ""


def _add(values: list[str], value: str, limit: int) -> None:
    if value not in values and len(values) < limit:
        values.append(value)


def _named(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED]) + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")
    return f"{what} {shown}"


class ReleaseView(ProfileView):
    """The view of a container running a release: the profile and the release's changes together
    (what the anomaly rules see), plus what rule CADR-REL-0001 says."""

    __slots__ = ("change", "release")

    def __init__(self, profile: Profile, release: Release, **kw: object) -> None:
        super().__init__(release_profile(profile), **kw)  # type: ignore[arg-type]
        self.release = release
        #: what the event being evaluated showed that the previous release never did ("" : nothing)
        self.change = ""

    def release_changed(self) -> bool:
        return bool(self.change)

    def release_previous(self) -> str:
        return short_image(self.release.previous_image, self.release.image) or "the previous release"

    def release_rollout(self) -> str:
        r = self.release
        if not r.by:
            return ""
        return (
            f", rolled out by {r.by} at {_clock(r.rolled_out)}" if r.rolled_out else f", rolled out by {r.by}"
        )

    def release_changes(self) -> str:
        """Everything the release did that the previous one never did, in a few words."""
        r = self.release
        parts = []
        if r.execs:
            parts.append(
                _named("runs new programs" if len(r.execs) > 1 else "runs a new program", list(r.execs))
            )
        if r.egress:
            parts.append(_named("connects to", r.egress))
        if r.dns:
            parts.append(_named("looks up", r.dns))
        if r.listen_ports:
            parts.append(_named("listens on port", [str(p) for p in r.listen_ports]))
        if r.privileges:
            parts.append(_named("calls", r.privileges))
        if not parts:
            return self.change
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
