"""Profiles as YAML: cadr's own export format, and Kubescape's ApplicationProfile and
NetworkNeighborhood objects read into cadr profiles.

A cadr document is one container's :class:`~schemas.records.Profile` with readable times::

    apiVersion: cadr.dev/v1
    kind: Profile
    workload_key: prod/shop/Deployment/api
    container: api
    status: complete
    learning_started: "2026-11-27T10:00:00Z"
    execs: {/usr/local/bin/python3.12: ["-m gunicorn app:app --workers * --bind *:8000"]}
    files: [/app/*, /proc/*/status]
    ...

Importing it replaces the profile (a restore). Kubescape objects
(``spdx.softwarecomposition.kubescape.io``) are allow-lists recorded by Kubescape's node agent:
they are added to whatever cadr learned and mark the profile finished. Their values are put
into cadr's pattern shapes (Kubescape's ``⋯`` dynamic segment becomes ``*``), so they meet the
events they describe.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import yaml

from schemas.errors import CadrError
from schemas.records import Profile, ProfileEdit, ProfileEditOp, ProfileStatus
from streams.baseline import arg_shape, dns_pattern, ip_class, path_pattern

__all__ = [
    "API_VERSION",
    "ImportedProfile",
    "ProfileImportError",
    "edits_for",
    "parse_documents",
    "profile_to_document",
    "profiles_to_yaml",
]

API_VERSION = "cadr.dev/v1"
_KUBESCAPE_GROUP = "spdx.softwarecomposition.kubescape.io"
_TIME_FIELDS = ("learning_started", "learning_until", "updated")
_WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}
# syscalls Kubescape lists that cadr's sensor reports as privilege changes (op names)
_ID_SYSCALLS = {"setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid"}
_PRIV_SYSCALLS = {
    "capset": "capset",
    "ptrace": "ptrace",
    "unshare": "unshare",
    "setns": "setns",
    "mount": "mount",
    "memfd_create": "memfd_create",
    "bpf": "bpf",
    "init_module": "init_module",
    "finit_module": "init_module",
}
_KINDS = {
    k.lower(): k for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
}
_DYNAMIC = "\u22ef"  # Kubescape's placeholder for a dynamic path segment


class ProfileImportError(CadrError):
    """A profile YAML document is invalid; the message names the document and the field."""


@dataclass
class ImportedProfile:
    """One container profile read from a document, and how importing it changes cadr's."""

    workload_key: str
    container: str
    profile: Profile
    op: ProfileEditOp
    status: ProfileStatus | None
    sources: list[str] = field(default_factory=list)
    #: what could not be carried over (e.g. Kubescape capabilities), for the user to read
    notes: list[str] = field(default_factory=list)


# --- cadr documents ------------------------------------------------------------------------


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _from_iso(value: Any, where: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp() * 1e9)
    try:
        stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProfileImportError(f"{where}: not a time: {value!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1e9)


def profile_to_document(profile: Profile) -> dict[str, Any]:
    """A profile as a cadr YAML document (times as ISO 8601 UTC)."""
    data = msgspec.to_builtins(profile)
    data.pop("schema_version", None)
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Profile"}
    doc.update(data)
    doc["status"] = profile.status.value
    for name in _TIME_FIELDS:
        if name in doc:
            doc[name] = _iso(doc[name])
    return doc


def profiles_to_yaml(profiles: Iterable[Profile]) -> str:
    """Profiles as one multi-document YAML text (one document per container)."""
    docs = [profile_to_document(p) for p in profiles]
    return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True, width=120)


def _cadr_document(doc: dict[str, Any], where: str, workload_key: str | None) -> ImportedProfile:
    data = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    for name in _TIME_FIELDS:
        if name in data:
            data[name] = _from_iso(data[name], f"{where}: {name}")
    if workload_key:
        data["workload_key"] = workload_key
    if not data.get("workload_key"):
        raise ProfileImportError(f"{where}: workload_key is empty (give --workload)")
    try:
        profile = msgspec.convert(data, Profile, strict=False)
    except msgspec.ValidationError as exc:
        raise ProfileImportError(f"{where}: {exc}") from exc
    return ImportedProfile(
        workload_key=profile.workload_key,
        container=profile.container,
        profile=profile,
        op=ProfileEditOp.REPLACE,
        status=None,
        sources=["cadr Profile"],
    )


# --- Kubescape documents -------------------------------------------------------------------


def _workload_of(doc: dict[str, Any], cluster: str, where: str) -> str:
    meta = doc.get("metadata") or {}
    labels = meta.get("labels") or {}
    namespace = labels.get("kubescape.io/workload-namespace") or meta.get("namespace") or "default"
    kind = labels.get("kubescape.io/workload-kind")
    name = labels.get("kubescape.io/workload-name")
    if not (kind and name):
        # older objects are named <kind>-<name>
        raw = str(meta.get("name") or "")
        head, _, rest = raw.partition("-")
        if head.lower() not in _KINDS or not rest:
            raise ProfileImportError(
                f"{where}: cannot tell the workload (no kubescape.io/workload-kind/-name labels and name "
                f"{raw!r} is not <kind>-<name>); give --workload"
            )
        kind, name = _KINDS[head.lower()], rest
    kind = _KINDS.get(str(kind).lower(), str(kind))
    return f"{cluster}/{namespace}/{kind}/{name}"


def _status_of(doc: dict[str, Any]) -> ProfileStatus:
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if str(annotations.get("kubescape.io/completion", "")).lower() == "partial":
        return ProfileStatus.PARTIAL
    return ProfileStatus.COMPLETE


def _path(value: Any) -> str:
    return path_pattern(str(value).replace(_DYNAMIC, "*"))


def _containers(doc: dict[str, Any], where: str) -> Iterable[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ProfileImportError(f"{where}: missing spec")
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(group) or []):
            if not isinstance(c, dict) or not c.get("name"):
                raise ProfileImportError(f"{where}: spec.{group}[{i}] has no name")
            yield str(c["name"]), c


def _application_profile(c: dict[str, Any], profile: Profile, notes: list[str], where: str) -> None:
    for i, e in enumerate(c.get("execs") or []):
        if not isinstance(e, dict) or not e.get("path"):
            raise ProfileImportError(f"{where}: execs[{i}] has no path")
        args = [str(a) for a in (e.get("args") or [])]
        shape = arg_shape([str(a).replace(_DYNAMIC, "*") for a in args]) if args else "*"
        shapes = profile.execs.setdefault(_path(e["path"]), [])
        if shape not in shapes:
            shapes.append(shape)
    for i, o in enumerate(c.get("opens") or []):
        if not isinstance(o, dict) or not o.get("path"):
            raise ProfileImportError(f"{where}: opens[{i}] has no path")
        pattern = _path(o["path"])
        _append(profile.files, pattern)
        if _WRITE_FLAGS & {str(f) for f in (o.get("flags") or [])}:
            _append(profile.writes, pattern)
    for name in c.get("syscalls") or []:
        name = str(name)
        if name in _ID_SYSCALLS:
            _append(profile.privileges, f"{name}:*")
        elif name in _PRIV_SYSCALLS:
            _append(profile.privileges, _PRIV_SYSCALLS[name])
    for ep in c.get("endpoints") or []:
        if not isinstance(ep, dict):
            continue
        host, port = _endpoint(str(ep.get("endpoint", "")))
        if port is None:
            continue
        if str(ep.get("direction", "")).lower() == "inbound":
            _append(profile.listen_ports, port)
        elif host:
            _egress(profile, host, port)
    caps = c.get("capabilities") or []
    if caps:
        notes.append(
            f"{len(caps)} capabilities not imported (cadr sees privilege changes, not capability checks): "
            + ", ".join(str(x) for x in caps)
        )


_ENDPOINT = re.compile(r"^(?:[a-z]+://)?(?P<host>[^:/]*)(?::(?P<port>\d+))?")


def _endpoint(text: str) -> tuple[str, int | None]:
    m = _ENDPOINT.match(text)
    if m is None or not m.group("port"):
        return "", None
    return m.group("host"), int(m.group("port"))


def _egress(profile: Profile, host: str, port: int) -> None:
    host = host.rstrip(".").lower()
    cls = ip_class(host)
    if cls == "private":
        _append(profile.egress, f"private:{port}")
    elif cls == "public":
        _append(profile.egress, f"{host}:{port}")
    else:
        name = dns_pattern(host)
        _append(profile.dns, name)
        _append(profile.egress, f"{name}:{port}")


def _network_neighborhood(c: dict[str, Any], profile: Profile, where: str) -> None:
    for i, e in enumerate(c.get("egress") or []):
        if not isinstance(e, dict):
            raise ProfileImportError(f"{where}: egress[{i}] must be a mapping")
        names = [str(n) for n in (e.get("dnsNames") or []) if n]
        if e.get("dns") and str(e["dns"]) not in names:
            names.append(str(e["dns"]))
        ports = [
            int(p["port"])
            for p in (e.get("ports") or [])
            if isinstance(p, dict) and p.get("port") is not None
        ]
        ip = str(e.get("ipAddress") or "")
        for name in names:
            _append(profile.dns, dns_pattern(name))
        for port in ports:
            for name in names:
                _egress(profile, name, port)
            if ip:
                _egress(profile, ip, port)
            elif not names:
                # a peer chosen by pod/namespace selectors: inside the cluster
                _append(profile.egress, f"private:{port}")
    for e in c.get("ingress") or []:
        if isinstance(e, dict):
            for p in e.get("ports") or []:
                if isinstance(p, dict) and p.get("port") is not None:
                    _append(profile.listen_ports, int(p["port"]))


def _append(values: list[Any], value: Any) -> None:
    if value not in values:
        values.append(value)


# --- entry point ---------------------------------------------------------------------------


def parse_documents(
    text: str,
    *,
    cluster: str,
    workload_key: str | None = None,
    where: str = "<input>",
) -> list[ImportedProfile]:
    """Every container profile in a YAML text of cadr and/or Kubescape documents.

    Kubescape documents about the same workload and container (an ApplicationProfile and its
    NetworkNeighborhood) are merged into one import. ``workload_key`` overrides the workload
    the documents name; ``cluster`` is used for Kubescape objects (which do not name one)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ProfileImportError(f"{where}: invalid YAML: {exc}") from exc
    if not docs:
        raise ProfileImportError(f"{where}: no documents")
    out: list[ImportedProfile] = []
    merged: dict[tuple[str, str], ImportedProfile] = {}
    for n, doc in enumerate(docs):
        at = f"{where}: document {n + 1}"
        if not isinstance(doc, dict):
            raise ProfileImportError(f"{at}: expected a mapping")
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            sub = yaml.safe_dump_all(doc["items"])
            out.extend(parse_documents(sub, cluster=cluster, workload_key=workload_key, where=at))
            continue
        kind = str(doc.get("kind", ""))
        api = str(doc.get("apiVersion", ""))
        if kind == "Profile" and api.startswith("cadr.dev/"):
            out.append(_cadr_document(doc, at, workload_key))
            continue
        if kind not in ("ApplicationProfile", "NetworkNeighborhood") or not api.startswith(_KUBESCAPE_GROUP):
            raise ProfileImportError(
                f"{at}: unsupported kind {api}/{kind} (expected {API_VERSION} Profile, or Kubescape "
                "ApplicationProfile / NetworkNeighborhood)"
            )
        key = workload_key or _workload_of(doc, cluster, at)
        status = _status_of(doc)
        for name, c in _containers(doc, at):
            item = merged.get((key, name))
            if item is None:
                item = merged[(key, name)] = ImportedProfile(
                    workload_key=key,
                    container=name,
                    profile=Profile(workload_key=key, container=name),
                    op=ProfileEditOp.ALLOW,
                    status=status,
                )
                out.append(item)
            elif status is ProfileStatus.PARTIAL:
                item.status = status
            where_c = f"{at} container {name}"
            if kind == "ApplicationProfile":
                _application_profile(c, item.profile, item.notes, where_c)
            else:
                _network_neighborhood(c, item.profile, where_c)
            item.sources.append(f"Kubescape {kind} {(doc.get('metadata') or {}).get('name', '')}".rstrip())
    return out


def edits_for(
    items: Iterable[ImportedProfile], *, edit_id: str, time_ns: int, user: str = ""
) -> list[ProfileEdit]:
    """The profile edits that import ``items``."""
    return [
        ProfileEdit(
            edit_id=f"{edit_id}-{i}",
            time=time_ns,
            op=item.op,
            workload_key=item.workload_key,
            container=item.container,
            profile=item.profile,
            status=item.status,
            user=user,
            reason="import: " + "; ".join(item.sources),
        )
        for i, item in enumerate(items)
    ]
