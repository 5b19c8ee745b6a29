"""Functions a rule condition may call: the only doors to the baseline and detect state.

Rules say ``not baseline.seen_exec()`` or ``state.written(process.exe)``; what those mean
lives here and in the objects the detect stage puts on the context, so a rule never
touches raw state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from schemas.glob import glob_match
from schemas.records import Event

__all__ = ["BASELINE_FACTS", "FUNCTIONS", "BaselineView", "DetectState", "EvalContext"]


class BaselineView(Protocol):
    """What the baseline stage answers about one workload's learned profile."""

    def ready(self) -> bool: ...
    def seen_exec(self, event: Event) -> bool: ...
    def seen_args(self, event: Event) -> bool: ...
    def seen_file(self, event: Event) -> bool: ...
    def seen_egress(self, event: Event) -> bool: ...
    def seen_dns(self, event: Event) -> bool: ...
    def seen_listen(self, event: Event) -> bool: ...
    def seen_privilege(self, event: Event) -> bool: ...
    # release drift (streams.baseline.release): facts about a container running a newer image
    def release_changed(self) -> bool: ...
    def release_previous(self) -> str: ...
    def release_rollout(self) -> str: ...
    def release_changes(self) -> str: ...


class DetectState(Protocol):
    """Short-lived facts the detect stage remembers (files written per container, recent repeats)."""

    def written(self, event: Event, path: str) -> bool: ...
    def repeats(self, event: Event, key: str, window_ns: int) -> int: ...


@dataclass
class EvalContext:
    """Everything a condition may look at for one event."""

    event: Event
    baseline: BaselineView | None = None
    state: DetectState | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=65536)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=1024)
def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def _net_private(ctx: EvalContext, ip: Any) -> bool:
    addr = _ip(str(ip)) if ip else None
    return bool(addr is not None and (addr.is_private or addr.is_loopback or addr.is_link_local))


def _net_loopback(ctx: EvalContext, ip: Any) -> bool:
    addr = _ip(str(ip)) if ip else None
    return bool(addr is not None and addr.is_loopback)


def _net_in(ctx: EvalContext, ip: Any, cidrs: Any) -> bool:
    addr = _ip(str(ip)) if ip else None
    if addr is None:
        return False
    items = cidrs if isinstance(cidrs, list) else [cidrs]
    return any(addr.version == _net(str(c)).version and addr in _net(str(c)) for c in items)


def _baseline(method: str) -> Callable[[EvalContext], bool]:
    def call(ctx: EvalContext) -> bool:
        # Without a complete baseline, "seen" is true: anomaly rules stay silent while learning.
        if ctx.baseline is None or not ctx.baseline.ready():
            return True
        return bool(getattr(ctx.baseline, method)(ctx.event))

    return call


def _baseline_ready(ctx: EvalContext) -> bool:
    return ctx.baseline is not None and ctx.baseline.ready()


def _baseline_release_changed(ctx: EvalContext) -> bool:
    """The event shows behaviour of a newer image that the release it replaced never had."""
    return ctx.baseline is not None and ctx.baseline.ready() and ctx.baseline.release_changed()


#: baseline facts an output template may name (``{baseline.release_previous}``)
BASELINE_FACTS = frozenset({"release_previous", "release_rollout", "release_changes"})


def _state_written(ctx: EvalContext, path: Any) -> bool:
    return ctx.state is not None and bool(path) and ctx.state.written(ctx.event, str(path))


def _state_repeats(ctx: EvalContext, scope: Any, key: Any, window_s: Any) -> int:
    """How many events reached this call with the same ``scope`` and ``key`` within the last ``window_s``
    seconds of event time, this one included. Conditions evaluate left to right and stop early, so only events
    that passed the terms before the call are counted: ``k8s_denied and state.repeats(denied, audit.user, 600)
    >= 5`` counts the denied requests of one user. Without detect state (a bare evaluation) every event is
    its own first."""
    if ctx.state is None:
        return 1
    window_ns = int(float(window_s) * 1_000_000_000)
    return ctx.state.repeats(ctx.event, f"{scope}\x1f{key}", window_ns)


def _items(value: Any) -> list[str]:
    """A value or list of values as strings (None and empty values dropped)."""
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v not in (None, "")]


def _text_contains_any(ctx: EvalContext, value: Any, needles: Any) -> bool:
    """Some value contains some needle (``contains`` against a list)."""
    wanted = _items(needles)
    return any(n in v for v in _items(value) for n in wanted)


def _text_glob_any(ctx: EvalContext, value: Any, patterns: Any) -> bool:
    """Some value matches some fnmatch pattern."""
    globs = _items(patterns)
    return any(glob_match(v, g) for v in _items(value) for g in globs)


def _text_glob_all(ctx: EvalContext, value: Any, patterns: Any) -> bool:
    """Every value matches some pattern (true for no values): ``not text.glob_all(x, (ok))``
    reads "some x is not in the known-good set"."""
    globs = _items(patterns)
    return all(any(glob_match(v, g) for g in globs) for v in _items(value))


def _text_match_any(casefold: bool) -> Callable[..., bool]:
    def match_any(ctx: EvalContext, value: Any, patterns: Any) -> bool:
        """Some value matches some wildcard pattern (``*``, ``?``, ``\\`` escapes; linear time)."""
        wanted = _items(patterns)
        return any(glob_match(v, p, syntax="sigma", casefold=casefold) for v in _items(value) for p in wanted)

    return match_any


@lru_cache(maxsize=1024)
def _re2(pattern: str) -> Any:
    import re2  # RE2 runs in time linear in the text, whatever the pattern

    return re2.compile(pattern)


def _text_regex_any(ctx: EvalContext, value: Any, patterns: Any) -> bool:
    """Some value contains a match of some RE2 regular expression (as ClickHouse's ``match``)."""
    compiled = [_re2(p) for p in _items(patterns)]
    return any(r.search(v) is not None for v in _items(value) for r in compiled)


def _dns_under(ctx: EvalContext, name: Any, domains: Any) -> bool:
    """``name`` is one of ``domains`` or a subdomain of one (case-insensitive, trailing dot
    ignored); ``evilnanopool.org`` is not under ``nanopool.org``."""
    if not name:
        return False
    host = str(name).rstrip(".").lower()
    for domain in _items(domains):
        d = domain.rstrip(".").lower().lstrip(".")
        if host == d or host.endswith("." + d):
            return True
    return False


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "baseline.ready": _baseline_ready,
    "baseline.release_changed": _baseline_release_changed,
    "baseline.seen_exec": _baseline("seen_exec"),
    "baseline.seen_args": _baseline("seen_args"),
    "baseline.seen_file": _baseline("seen_file"),
    "baseline.seen_egress": _baseline("seen_egress"),
    "baseline.seen_dns": _baseline("seen_dns"),
    "baseline.seen_listen": _baseline("seen_listen"),
    "baseline.seen_privilege": _baseline("seen_privilege"),
    "state.written": _state_written,
    "state.repeats": _state_repeats,
    "net.private": _net_private,
    "net.loopback": _net_loopback,
    "net.in": _net_in,
    "dns.under": _dns_under,
    "text.contains_any": _text_contains_any,
    "text.glob_any": _text_glob_any,
    "text.glob_all": _text_glob_all,
    "text.match_any": _text_match_any(casefold=False),
    "text.imatch_any": _text_match_any(casefold=True),
    "text.regex_any": _text_regex_any,
}
