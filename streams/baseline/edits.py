"""User edits of profiles (``cadr profiles allow/import/relearn/accept-release``): pure functions over profiles."""

from __future__ import annotations

import msgspec

from schemas.records import Profile, ProfileEdit, ProfileEditOp, ProfileStatus, Release

__all__ = ["apply_edit", "merge_entries", "release_entries"]


def _copy(profile: Profile) -> Profile:
    return msgspec.convert(msgspec.to_builtins(profile), Profile)


def merge_entries(profile: Profile, entries: Profile) -> None:
    """Add every entry of ``entries`` to ``profile`` (exact values; no pattern reasoning)."""
    for exe, shapes in entries.execs.items():
        mine = profile.execs.setdefault(exe, [])
        mine.extend(s for s in (shapes or ["*"]) if s not in mine)
    for name in ("files", "writes", "egress", "dns", "privileges"):
        mine = getattr(profile, name)
        mine.extend(v for v in dict.fromkeys(getattr(entries, name)) if v not in mine)
    ports = profile.listen_ports
    ports.extend(p for p in dict.fromkeys(entries.listen_ports) if p not in ports)


def release_entries(release: Release) -> Profile:
    """A release's changes as profile entries (see :mod:`streams.baseline.release`)."""
    return Profile(
        workload_key="",
        execs=release.execs,
        egress=release.egress,
        dns=release.dns,
        listen_ports=release.listen_ports,
        privileges=release.privileges,
    )


def apply_edit(profile: Profile | None, edit: ProfileEdit, *, workload_key: str, container: str) -> Profile:
    """The profile after a user edit (pure: ``profile`` is not modified).

    ``allow`` adds the edit's entries to what was learned; ``replace`` installs the edit's
    profile; ``relearn`` starts learning again at the next event — as a partial profile, since
    the sensor does not re-report files the running containers already opened; ``accept-release``
    makes the profile's pending release its baseline."""
    revision = profile.revision if profile is not None else 0
    if edit.op is ProfileEditOp.RELEARN:
        out = Profile(workload_key=workload_key, container=container, started_mid_run=True)
    elif edit.op is ProfileEditOp.ACCEPT_RELEASE:
        # the pending release becomes the baseline: its changes join the profile, its image is the
        # profile's (nothing to accept: the profile stays as it is)
        if profile is None:
            raise ValueError("no profile to accept a release of")
        out = _copy(profile)
        if out.release is not None:
            merge_entries(out, release_entries(out.release))
            out.image = out.release.image
            out.release = None
    elif edit.op is ProfileEditOp.REPLACE:
        if edit.profile is None:
            raise ValueError("a replace edit needs a profile")
        out = _copy(edit.profile)
        revision = max(revision, out.revision)
    else:
        # a new profile's learning window starts at the workload's first event
        out = Profile(workload_key=workload_key, container=container) if profile is None else _copy(profile)
        if edit.profile is not None:
            merge_entries(out, edit.profile)
    out.workload_key = workload_key
    out.container = container
    if edit.status is not None:
        out.status = edit.status
        if edit.status is not ProfileStatus.LEARNING and not out.learning_started:
            out.learning_started = out.learning_until = edit.time
    out.revision = revision + 1
    out.updated = max(out.updated, edit.time)
    return out
