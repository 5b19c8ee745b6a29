"""Named forensic queries: SQL files with typed parameters, bound by ClickHouse (never spliced into SQL).

A named query is a YAML file in ``streams/forensics/queries/``: ``name``, ``summary``, ``params`` (name,
ClickHouse type, default, help) and ``sql`` using ``{name:Type}`` placeholders plus ``{db:Identifier}`` for
the database. Loading checks that the SQL uses exactly the declared parameters with the declared types, so a
query cannot silently ignore an argument. Binding validates and converts each value in Python (integers in
range, times parsed) and hands it to clickhouse-connect, which sends it as a ``param_<name>`` value: the server
parses it as data of the declared type, so a value like ``x' OR 1=1 --`` is just a string that matches nothing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from schemas.errors import CadrError

__all__ = [
    "QUERIES_DIR",
    "NamedQuery",
    "NamedQueryError",
    "Param",
    "bind_params",
    "load_named_queries",
    "parse_time_ns",
]

QUERIES_DIR = Path(__file__).with_name("queries")

_PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")
_INT_RANGES = {
    "UInt8": (0, 2**8 - 1),
    "UInt16": (0, 2**16 - 1),
    "UInt32": (0, 2**32 - 1),
    "UInt64": (0, 2**64 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "Int64": (-(2**63), 2**63 - 1),
}
_DURATION = re.compile(r"^(?P<sign>[+-])(?P<n>\d+(?:\.\d+)?)(?P<unit>ns|us|ms|s|m|h|d|w)$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_UNIT_NS |= {"d": 86400 * 10**9, "w": 7 * 86400 * 10**9}


class NamedQueryError(CadrError):
    """A named query file is malformed, or an argument does not fit its parameter."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    summary: str
    description: str
    params: tuple[Param, ...]
    sql: str
    path: Path

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise NamedQueryError(f"query {self.name!r} has no parameter {name!r}")


def _normalize_type(type_: str) -> str:
    return re.sub(r"\s+", "", type_)


def _load_one(path: Path) -> NamedQuery:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NamedQueryError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise NamedQueryError(f"{path}: expected a mapping")
    for key in ("name", "summary", "sql"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise NamedQueryError(f"{path}: '{key}' is required")
    params: list[Param] = []
    for i, raw in enumerate(data.get("params") or []):
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise NamedQueryError(f"{path}: params[{i}] needs name and type")
        default = raw.get("default")
        params.append(
            Param(
                name=str(raw["name"]),
                type=str(raw["type"]),
                default=None if default is None else str(default),
                help=str(raw.get("help", "")),
            )
        )
    declared = {p.name: _normalize_type(p.type) for p in params}
    used: dict[str, str] = {}
    for name, type_ in _PLACEHOLDER.findall(data["sql"]):
        norm = _normalize_type(type_)
        if name == "db":
            if norm != "Identifier":
                raise NamedQueryError(f"{path}: {{db}} must be bound as Identifier")
            continue
        if name not in declared:
            raise NamedQueryError(
                f"{path}: SQL uses {{{name}:{type_}}} but no parameter {name!r} is declared"
            )
        if declared[name] != norm:
            raise NamedQueryError(f"{path}: {{{name}}} is used as {type_} but declared {declared[name]}")
        used[name] = norm
    unused = set(declared) - set(used)
    if unused:
        raise NamedQueryError(f"{path}: declared parameters never used in the SQL: {sorted(unused)}")
    for p in params:
        if _base_type(p.type) not in _SUPPORTED:
            raise NamedQueryError(f"{path}: parameter {p.name!r} has unsupported type {p.type}")
    return NamedQuery(
        name=data["name"],
        summary=data["summary"].strip(),
        description=str(data.get("description", "")).strip(),
        params=tuple(params),
        sql=data["sql"],
        path=path,
    )


def load_named_queries(directory: Path = QUERIES_DIR) -> dict[str, NamedQuery]:
    """Every named query of ``directory`` by name."""
    queries: dict[str, NamedQuery] = {}
    for path in sorted(directory.glob("*.yaml")):
        query = _load_one(path)
        if query.name in queries:
            raise NamedQueryError(f"{path}: duplicate query name {query.name!r}")
        if query.name != path.stem:
            raise NamedQueryError(f"{path}: query name {query.name!r} must match the file name")
        queries[query.name] = query
    return queries


def _base_type(type_: str) -> str:
    t = _normalize_type(type_)
    if t.startswith("DateTime64"):
        return "DateTime64"
    return t


_SUPPORTED = {"String", "DateTime64", "Array(String)", *_INT_RANGES}


def parse_time_ns(text: str, now_ns: int | None = None) -> int:
    """A time as nanoseconds since the epoch: ISO 8601 (naive = UTC), ``now``, ``now-2h``/``-2h``, or epoch
    seconds / milliseconds / nanoseconds (by magnitude)."""
    now = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if value == "now":
        return now
    rel = value[3:] if value.startswith("now") else value
    match = _DURATION.match(rel)
    if match:
        delta = int(float(match.group("n")) * _UNIT_NS[match.group("unit")])
        return now + (delta if match.group("sign") == "+" else -delta)
    if re.fullmatch(r"\d+", value):
        n = int(value)
        if n < 10**11:
            return n * 10**9
        if n < 10**14:
            return n * 10**6
        return n
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise NamedQueryError(
            f"not a time: {text!r} (use ISO 8601, epoch seconds/ns, 'now' or a duration like -2h)"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 10**9 + parsed.microsecond * 1000


def _ns_to_text(ns: int) -> str:
    # DateTime64(9) parameter text: 'YYYY-MM-DD hh:mm:ss.nnnnnnnnn' (UTC)
    seconds, frac = divmod(ns, 10**9)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{frac:09d}"


def _convert(param: Param, value: str, now_ns: int) -> Any:
    base = _base_type(param.type)
    if base == "String":
        return value
    if base == "Array(String)":
        return [v.strip() for v in value.split(",") if v.strip()]
    if base == "DateTime64":
        ns = parse_time_ns(value, now_ns)
        if ns < 0:
            raise NamedQueryError(f"{param.name}: {value!r} is before 1970")
        return _ns_to_text(ns)
    lo, hi = _INT_RANGES[base]
    try:
        number = int(value)
    except ValueError as exc:
        raise NamedQueryError(f"{param.name}: {value!r} is not an integer") from exc
    if not lo <= number <= hi:
        raise NamedQueryError(f"{param.name}: {number} is out of range for {param.type}")
    return number


def bind_params(
    query: NamedQuery, args: dict[str, str], *, database: str = "cadr", now_ns: int | None = None
) -> dict[str, Any]:
    """Validate ``args`` against the query's parameters and return the values to bind (with ``db``)."""
    unknown = set(args) - {p.name for p in query.params}
    if unknown:
        names = ", ".join(p.name for p in query.params) or "none"
        raise NamedQueryError(
            f"query {query.name!r} has no parameter(s) {sorted(unknown)} (it takes: {names})"
        )
    now = time.time_ns() if now_ns is None else now_ns
    bound: dict[str, Any] = {"db": database}
    for p in query.params:
        if p.name in args:
            raw = args[p.name]
        elif p.default is not None:
            raw = p.default
        else:
            raise NamedQueryError(f"query {query.name!r} needs --param {p.name}=... ({p.help or p.type})")
        bound[p.name] = _convert(p, raw, now)
    return bound
