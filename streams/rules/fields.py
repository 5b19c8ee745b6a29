"""Field paths of the rule language, resolved against a typed :class:`~schemas.records.Event`.

A path is compiled once into a getter; rules never walk records by hand. Record fields are
reached by name (``process.exe``, ``audit.request.containers.privileged``); a few computed
fields (``process.name``, ``workload.key`` ...) save every rule from re-deriving them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from schemas.errors import CadrError
from schemas.records import Event

__all__ = ["BLOCKS", "COMPUTED", "FieldError", "Getter", "compile_field", "is_field"]

Getter = Callable[[Event], Any]


class FieldError(CadrError):
    """A rule names a field that does not exist."""


#: the event's blocks; ``x.y`` where x is one of these is a field path
BLOCKS = {"workload", "process", "file", "network", "dns", "privilege", "audit", "health"}
TOP_LEVEL = {"event_id", "time", "node", "source", "kind", "enriched", "replayed", "schema_version"}


def _process_name(e: Event) -> str | None:
    p = e.process
    if p is None:
        return None
    return posixpath.basename(p.exe) if p.exe else p.comm


def _process_cmdline(e: Event) -> str | None:
    p = e.process
    if p is None:
        return None
    return " ".join(p.args) if p.args else (p.exe or p.comm)


_SHORT = 80


def _process_cmdline_short(e: Event) -> str | None:
    """The command line cut to a length that fits in a sentence (stories, titles)."""
    line = _process_cmdline(e)
    if line is None or len(line) <= _SHORT:
        return line
    return line[: _SHORT - 3].rstrip() + "..."


def _parent_name(e: Event) -> str | None:
    p = e.process
    return posixpath.basename(p.parent_exe) if p is not None and p.parent_exe else None


def _process_url(e: Event) -> str | None:
    """What a download tool fetches: the first argument with a scheme, else the first operand
    that looks like a host or path (``curl -o /tmp/x evil.example/x`` → ``evil.example/x``)."""
    p = e.process
    if p is None or len(p.args) < 2:
        return None
    operands = p.args[1:]
    for arg in operands:
        if "://" in arg:
            return arg
    for arg in operands:
        if arg and not arg.startswith(("-", "/")) and ("." in arg or "/" in arg):
            return arg
    return None


def _process_url_host(e: Event) -> str | None:
    url = _process_url(e)
    if url is None:
        return None
    try:
        host = urlsplit(url if "://" in url else "//" + url).hostname
    except ValueError:
        return None
    return host or None


_PRELOAD_SPLIT = re.compile(r"[:\s]+")


def _ld_preload(e: Event) -> list[str] | None:
    """The LD_PRELOAD entries of an exec (ld.so accepts ``:`` and whitespace as separators)."""
    p = e.process
    value = p.env.get("LD_PRELOAD") if p is not None else None
    if not value:
        return None
    return [x for x in _PRELOAD_SPLIT.split(value) if x] or None


def _file_name(e: Event) -> str | None:
    return posixpath.basename(e.file.path) if e.file is not None else None


_O_TRUNC = 0o1000


def _file_truncate(e: Event) -> bool | None:
    """The open truncates the file (O_TRUNC): its content is thrown away."""
    return bool(e.file.flags & _O_TRUNC) if e.file is not None else None


def _file_dir(e: Event) -> str | None:
    return posixpath.dirname(e.file.path) if e.file is not None else None


def _workload_label(e: Event) -> str:
    """Where, for a sentence: ``ns/pod container c``, or ``host <node>`` for host processes."""
    w = e.workload
    if w.is_host:
        return f"host {e.node}".strip()
    where = f"{w.namespace}/{w.pod}" if w.namespace else (w.pod or w.container_id)
    return f"{where} container {w.container}" if w.container else where


def _user_is_sa(e: Event) -> bool:
    return e.audit is not None and e.audit.user.startswith("system:serviceaccount:")


def _sa_part(index: int) -> Getter:
    def get(e: Event) -> str | None:
        if not _user_is_sa(e):
            return None
        assert e.audit is not None
        parts = e.audit.user.split(":")
        return parts[index] if len(parts) == 4 else None

    return get


COMPUTED: dict[str, Getter] = {
    "process.name": _process_name,
    "process.cmdline": _process_cmdline,
    "process.cmdline_short": _process_cmdline_short,
    "process.parent_name": _parent_name,
    "process.argc": lambda e: len(e.process.args) if e.process is not None else None,
    "process.url": _process_url,
    "process.url_host": _process_url_host,
    "process.ld_preload": _ld_preload,
    "file.name": _file_name,
    "file.dir": _file_dir,
    "file.truncate": _file_truncate,
    "workload.key": lambda e: e.workload.key(),
    "workload.is_host": lambda e: e.workload.is_host,
    "workload.in_container": lambda e: not e.workload.is_host,
    "workload.label": _workload_label,
    "audit.user_is_sa": _user_is_sa,
    "audit.sa_namespace": _sa_part(2),
    "audit.sa_name": _sa_part(3),
}


def is_field(name: str) -> bool:
    """Whether ``name`` looks like a field path (so a bare word is not taken as a string)."""
    head = name.split(".", 1)[0]
    return name in COMPUTED or name in TOP_LEVEL or (head in BLOCKS and "." in name) or head in BLOCKS


def _navigate(value: Any, keys: list[str]) -> Any:
    """Walk dict keys; across lists, collect every element's value (flattened)."""
    for key in keys:
        if value is None:
            return None
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list):
            out: list[Any] = []
            for item in value:
                got = _navigate(item, [key])
                if isinstance(got, list):
                    out.extend(got)
                elif got is not None:
                    out.append(got)
            value = out
        else:
            value = getattr(value, key, None)
    return value


def compile_field(path: str) -> Getter:
    """Compile a field path into a getter; raises :class:`FieldError` for unknown paths."""
    if path in COMPUTED:
        return COMPUTED[path]
    if path in TOP_LEVEL:

        def get_top(e: Event, _n: str = path) -> Any:
            return getattr(e, _n)

        return get_top
    parts = path.split(".")
    block = parts[0]
    if block not in BLOCKS:
        raise FieldError(f"unknown field {path!r}")
    if len(parts) == 1:

        def get_block(e: Event, _b: str = block) -> Any:
            return getattr(e, _b)

        return get_block
    # validate the first attribute against the record type so typos fail at load time
    from schemas import records

    block_type = {
        "workload": records.Workload,
        "process": records.Process,
        "file": records.File,
        "network": records.Network,
        "dns": records.Dns,
        "privilege": records.Privilege,
        "audit": records.Audit,
        "health": records.SensorHealth,
    }[block]
    attr = parts[1]
    if attr not in block_type.__struct_fields__:
        raise FieldError(f"unknown field {path!r}: {block_type.__name__} has no {attr!r}")
    rest = parts[2:]
    if not rest:

        def get_attr(e: Event, _b: str = block, _a: str = attr) -> Any:
            obj = getattr(e, _b)
            return None if obj is None else getattr(obj, _a)

        return get_attr

    def get_nested(e: Event, _b: str = block, _a: str = attr, _r: list[str] = rest) -> Any:
        obj = getattr(e, _b)
        return None if obj is None else _navigate(getattr(obj, _a), _r)

    return get_nested
