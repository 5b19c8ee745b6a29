"""``cadr profiles``: show, export, import and edit behavioural baselines.

Profiles are read from their snapshots on ``cadr.profiles`` (the newest revision of each).
Edits (``allow``, ``import``, ``relearn``) are published to ``<prefix>profile-edits`` keyed by
workload; the running worker applies them without a restart (see :mod:`streams.profiles`).

A WORKLOAD is a workload key ``cluster/namespace/Kind/name``, or ``namespace/Kind/name`` (the
configured cluster), or ``namespace/name`` / ``name`` (any kind; must name one workload).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from schemas.codec import to_dict
from schemas.errors import CadrError
from schemas.records import Profile, ProfileEdit, ProfileEditOp
from schemas.settings import Settings
from schemas.text import escape_controls
from streams.kafka_access import client_options

__all__ = ["allow_edit", "register", "release_edit", "resolve_workload", "workload_matcher"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profiles",
        help="show, export, import and edit behavioural baselines",
        description=(
            "Behavioural baselines (application profiles) per workload and container. Reads snapshots from "
            "the profiles topic; edits go to the running worker through the profile-edits topic and apply "
            "without a restart. WORKLOAD is cluster/namespace/Kind/name, namespace/Kind/name, namespace/name "
            "or name."
        ),
    )
    sub = p.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("workload", metavar="WORKLOAD", help="the workload (see cadr profiles --help)")
        q.add_argument("--container", default="", help="one container's profile (default: every container)")
        q.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Kafka (default: 60)")

    s = sub.add_parser(
        "show", help="print a workload's profiles", description="Print the newest profile snapshots."
    )
    common(s)
    s.add_argument("--json", action="store_true", help="print the profile records as JSON (default: text)")
    s.set_defaults(handler=_show)

    e = sub.add_parser(
        "export", help="write a workload's profiles to YAML", description="Export profiles as YAML."
    )
    common(e)
    e.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="YAML file to write ('-' for stdout)"
    )
    e.set_defaults(handler=_export)

    i = sub.add_parser(
        "import",
        help="load profiles from YAML (cadr, or Kubescape ApplicationProfile / NetworkNeighborhood)",
        description=(
            "Publish profiles read from YAML: a cadr export replaces the profile; Kubescape "
            "ApplicationProfile and NetworkNeighborhood objects are added to what cadr learned and finish "
            "its learning."
        ),
    )
    i.add_argument("file", metavar="FILE", help="YAML file ('-' for stdin)")
    i.add_argument(
        "--workload", default="", help="import into this workload key (default: the one the file names)"
    )
    i.add_argument("--dry-run", action="store_true", help="print what would be imported, publish nothing")
    i.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Kafka (default: 60)")
    i.set_defaults(handler=_import)

    a = sub.add_parser(
        "allow",
        help="add entries to a workload's baseline",
        description=(
            "Allow behaviour in a workload's baseline (applied by the running worker at once). Values are "
            "patterns: '*' matches any characters. --args applies to the single --exec given."
        ),
    )
    common(a)
    a.add_argument(
        "--exec",
        dest="execs",
        action="append",
        default=[],
        metavar="PATH",
        help="program path (repeatable; default: none)",
    )
    a.add_argument(
        "--args",
        dest="arg_shapes",
        action="append",
        default=[],
        metavar="SHAPE",
        help="argument shape of --exec: argv[1:] joined by spaces (repeatable; default: any arguments)",
    )
    a.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="PATTERN",
        help="file read (repeatable; default: none)",
    )
    a.add_argument(
        "--write",
        dest="writes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="file written (repeatable; default: none)",
    )
    a.add_argument(
        "--egress",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=(
            "destination: dns-name:port, ip:port, private:port or cluster/ns/Kind/name:port "
            "(repeatable; default: none)"
        ),
    )
    a.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="DNS name looked up (repeatable; default: none)",
    )
    a.add_argument(
        "--listen",
        action="append",
        default=[],
        type=int,
        metavar="PORT",
        help="listening port (repeatable; default: none)",
    )
    a.add_argument(
        "--privilege",
        action="append",
        default=[],
        metavar="OP",
        help="privilege change, e.g. setuid:101 or unshare (repeatable; default: none)",
    )
    a.add_argument("--reason", default="", help="why (kept with the edit; default: empty)")
    a.set_defaults(handler=_allow)

    r = sub.add_parser(
        "relearn",
        help="forget a workload's baseline and learn it again",
        description="Start learning again at the workload's next event (the new profile ends as partial).",
    )
    common(r)
    r.add_argument("--reason", default="", help="why (kept with the edit; default: empty)")
    r.set_defaults(handler=_relearn)

    ar = sub.add_parser(
        "accept-release",
        help="make a workload's new release its baseline",
        description=(
            "A workload's new image is compared with the profile of the release it replaced, and what it does "
            "that the previous release never did is told once (rule CADR-REL-0001). Accepting the release adds "
            "those changes to the profile and makes the new image the baseline; the notice stops."
        ),
    )
    common(ar)
    ar.add_argument("--reason", default="", help="why (kept with the edit; default: empty)")
    ar.set_defaults(handler=_accept_release)
    p.set_defaults(handler=lambda args, settings: (p.print_help(), 2)[1])


# --- workloads -----------------------------------------------------------------------------


def workload_matcher(text: str, cluster: str) -> tuple[str | None, Callable[[Profile], bool]]:
    """(exact workload key or None, predicate on profiles) for a WORKLOAD argument."""
    parts = text.strip("/").split("/")
    if len(parts) == 4:
        key = text.strip("/")
    elif len(parts) == 3:
        key = f"{cluster}/{text.strip('/')}"
    elif len(parts) in (1, 2):
        ns, name = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])

        def loose(p: Profile) -> bool:
            bits = p.workload_key.split("/")
            return len(bits) == 4 and bits[3] == name and (not ns or bits[1] == ns)

        return None, loose
    else:
        raise CadrError(f"cannot read workload {text!r}: expected cluster/namespace/Kind/name")
    return key, lambda p: p.workload_key == key


def resolve_workload(settings: Settings, text: str, timeout: float) -> str:
    """The one workload key WORKLOAD names (looked up in the snapshots when not exact)."""
    from streams.profiles import read_profiles, run

    key, match = workload_matcher(text, settings.cluster)
    if key is not None:
        return key
    keys = sorted({p.workload_key for p in run(read_profiles(settings, match, timeout))})
    if len(keys) != 1:
        found = ", ".join(keys) if keys else "none"
        raise CadrError(
            f"{text!r} must name exactly one workload (found: {found}); give cluster/namespace/Kind/name"
        )
    return keys[0]


def _need_kafka(settings: Settings) -> None:
    if not settings.kafka.bootstrap:
        raise CadrError("no Kafka to talk to: pass --kafka HOST:PORT (or set CADR_KAFKA_BOOTSTRAP)")


def _profiles(args: argparse.Namespace, settings: Settings) -> list[Profile]:
    from streams.profiles import read_profiles, run

    _need_kafka(settings)
    _, match = workload_matcher(args.workload, settings.cluster)
    container = args.container

    def wanted(p: Profile) -> bool:
        return match(p) and (not container or p.container == container)

    found: list[Profile] = run(read_profiles(settings, wanted, args.timeout))
    if not found:
        raise CadrError(f"no profile for {args.workload}{' container ' + container if container else ''}")
    return found


# --- show / export -------------------------------------------------------------------------


def _time(ns: int) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_profile(p: Profile) -> str:
    """A profile as text for people."""
    lines = [
        f"{p.workload_key}  container {p.container or '-'}  {p.status.value}"
        f"{' (learning began on a running container)' if p.started_mid_run else ''}  revision {p.revision}",
        f"  learning {_time(p.learning_started)} .. {_time(p.learning_until)}, updated {_time(p.updated)}",
    ]
    if p.image:
        lines.append(f"  image {p.image}")
    r = p.release
    if r is not None:
        by = f", rolled out by {r.by} at {_time(r.rolled_out)}" if r.by else ""
        lines.append(
            f"  release {r.image} since {_time(r.since)}{by}: not accepted yet (cadr profiles accept-release)"
        )
        news = [*r.execs, *r.egress, *r.dns, *(str(x) for x in r.listen_ports), *r.privileges]
        lines.extend(f"    new: {v}" for v in news)
    if p.execs:
        lines.append(f"  execs ({len(p.execs)}):")
        width = min(48, max(len(k) for k in p.execs))
        for exe, shapes in sorted(p.execs.items()):
            for i, shape in enumerate(shapes or ["*"]):
                lines.append(f"    {(exe if i == 0 else ''):<{width}}  {shape or '(no arguments)'}")
    for title, values in (
        ("files", p.files),
        ("writes", p.writes),
        ("egress", p.egress),
        ("dns", p.dns),
        ("listen ports", [str(x) for x in p.listen_ports]),
        ("privileges", p.privileges),
    ):
        if values:
            lines.append(f"  {title} ({len(values)}):")
            lines.extend(f"    {v}" for v in sorted(values))
    return "\n".join(escape_controls(line) for line in lines)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    found = _profiles(args, settings)
    if args.json:
        for p in found:
            sys.stdout.write(orjson.dumps(to_dict(p)).decode() + "\n")
    else:
        print("\n\n".join(render_profile(p) for p in found))
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from streams.profiles_import import profiles_to_yaml

    found = _profiles(args, settings)
    text = profiles_to_yaml(found)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {len(found)} profile(s) to {args.output}", file=sys.stderr)
    return 0


# --- edits ---------------------------------------------------------------------------------


def _publish(settings: Settings, edits: list[ProfileEdit], timeout: float) -> int:
    from cadr.topics import ensure_topics
    from schemas.topics import edits_spec
    from streams.profiles import publish_edits, run

    _need_kafka(settings)

    async def publish() -> int:
        spec = edits_spec(settings.kafka.topic_prefix, settings.kafka.partitions)
        await ensure_topics(
            settings.kafka.bootstrap, [spec], timeout_s=timeout, client_options=client_options(settings.kafka)
        )
        return await publish_edits(settings, edits, timeout)

    return int(run(publish()))


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from streams.profiles_import import edits_for, parse_documents

    path = args.file
    text = sys.stdin.read() if path == "-" else _read(path)
    items = parse_documents(text, cluster=settings.cluster, workload_key=args.workload or None, where=path)
    for item in items:
        verb = "replace" if item.op is ProfileEditOp.REPLACE else "add to"
        p = item.profile
        size = (
            len(p.execs) + len(p.files) + len(p.egress) + len(p.dns) + len(p.listen_ports) + len(p.privileges)
        )
        sources = ", ".join(item.sources)
        print(f"{verb} {item.workload_key} container {item.container}: {size} entries from {sources}")
        for note in item.notes:
            print(f"  note: {note}")
    if args.dry_run:
        return 0
    edits = edits_for(items, edit_id=uuid.uuid4().hex, time_ns=time.time_ns(), user=_user())
    n = _publish(settings, edits, args.timeout)
    print(f"published {n} edit(s) to {settings.topic('profile-edits')}", file=sys.stderr)
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CadrError(f"cannot read {path}: {exc}") from exc


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return ""


def allow_edit(
    workload_key: str,
    container: str = "",
    *,
    execs: Sequence[str] = (),
    arg_shapes: Sequence[str] = (),
    files: Sequence[str] = (),
    writes: Sequence[str] = (),
    egress: Sequence[str] = (),
    dns: Sequence[str] = (),
    listen: Sequence[int] = (),
    privileges: Sequence[str] = (),
    user: str = "",
    reason: str = "",
) -> ProfileEdit:
    """The edit ``cadr profiles allow`` publishes."""
    from streams.baseline import arg_shape, dns_pattern, path_pattern

    if arg_shapes and len(execs) != 1:
        raise CadrError("--args needs exactly one --exec")
    for e in egress:
        host, _, port = e.rpartition(":")
        if not host or not (port.isdigit() or port == "*"):
            raise CadrError(f"--egress {e!r}: expected HOST:PORT")
    try:
        # values meet events only in the collapsed shapes events are compared in
        shapes = [arg_shape(["argv0", *shlex.split(a)]) if a != "*" else "*" for a in arg_shapes]
    except ValueError as exc:
        raise CadrError(f"--args: {exc}") from exc
    written = [path_pattern(f) for f in writes]
    entries = Profile(
        workload_key=workload_key,
        container=container,
        execs={path_pattern(exe): shapes for exe in execs},
        files=list(dict.fromkeys([*(path_pattern(f) for f in files), *written])),
        writes=written,
        egress=list(egress),
        dns=[dns_pattern(d) for d in dns],
        listen_ports=list(listen),
        privileges=list(privileges),
    )
    if not (
        entries.execs
        or entries.files
        or entries.egress
        or entries.dns
        or entries.listen_ports
        or entries.privileges
    ):
        raise CadrError(
            "nothing to allow: give --exec, --file, --write, --egress, --dns, --listen or --privilege"
        )
    return ProfileEdit(
        edit_id=uuid.uuid4().hex,
        time=time.time_ns(),
        op=ProfileEditOp.ALLOW,
        workload_key=workload_key,
        container=container,
        profile=entries,
        user=user,
        reason=reason,
    )


def _allow(args: argparse.Namespace, settings: Settings) -> int:
    _need_kafka(settings)
    key = resolve_workload(settings, args.workload, args.timeout)
    edit = allow_edit(
        key,
        args.container,
        execs=args.execs,
        arg_shapes=args.arg_shapes,
        files=args.files,
        writes=args.writes,
        egress=args.egress,
        dns=args.dns,
        listen=args.listen,
        privileges=args.privilege,
        user=_user(),
        reason=args.reason,
    )
    _publish(settings, [edit], args.timeout)
    where = f"container {args.container}" if args.container else "every container"
    print(f"allowed in {key} ({where}); the worker applies it at once (edit {edit.edit_id})", file=sys.stderr)
    return 0


def release_edit(workload_key: str, container: str = "", *, user: str = "", reason: str = "") -> ProfileEdit:
    """The edit ``cadr profiles accept-release`` publishes."""
    return ProfileEdit(
        edit_id=uuid.uuid4().hex,
        time=time.time_ns(),
        op=ProfileEditOp.ACCEPT_RELEASE,
        workload_key=workload_key,
        container=container,
        user=user,
        reason=reason,
    )


def _accept_release(args: argparse.Namespace, settings: Settings) -> int:
    _need_kafka(settings)
    key = resolve_workload(settings, args.workload, args.timeout)
    edit = release_edit(key, args.container, user=_user(), reason=args.reason)
    _publish(settings, [edit], args.timeout)
    where = f"container {args.container}" if args.container else "every container"
    print(f"accepted the release of {key} ({where}); it is the baseline from now on", file=sys.stderr)
    return 0


def _relearn(args: argparse.Namespace, settings: Settings) -> int:
    _need_kafka(settings)
    key = resolve_workload(settings, args.workload, args.timeout)
    edit = ProfileEdit(
        edit_id=uuid.uuid4().hex,
        time=time.time_ns(),
        op=ProfileEditOp.RELEARN,
        workload_key=key,
        container=args.container,
        user=_user(),
        reason=args.reason,
    )
    _publish(settings, [edit], args.timeout)
    print(f"relearning {key}; learning starts at its next event", file=sys.stderr)
    return 0
