"""Patterns: how a profile remembers a value, so that normal variation is still "seen".

Values are collapsed into patterns as they are learned (``/proc/*/status``, ``/tmp/tmp*``, ``-p *``) so
profiles stay small and new pod names, PIDs, rotated temp files and scaled replicas still match. Patterns
have one wildcard, ``*``, matching any run of characters (``/`` included). A value is collapsed the same way
when it is learned and when it is checked, so the two meet.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from schemas.glob import Glob, compile_glob
from schemas.records import Event, Workload

__all__ = [
    "Patterns",
    "arg_shape",
    "args_shape",
    "dns_pattern",
    "egress_key",
    "exe_pattern",
    "file_pattern",
    "ip_class",
    "own",
    "parse_duration",
    "path_pattern",
    "privilege_key",
    "profile_key",
]

#: longest argument kept whole in an argument shape (a longer one keeps its head)
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


def privilege_key(event: Event) -> str | None:
    priv = event.privilege
    if priv is None:
        return None
    if priv.op in _UID_OPS:
        return f"{priv.op}:{priv.new_uid}"
    if priv.op in _GID_OPS:
        return f"{priv.op}:{priv.new_gid}"
    return priv.op


def own(value: str, wl: Workload) -> str:
    """Replace the pod's own name and IP in ``value``: they change with every replica."""
    pod = wl.pod
    if len(pod) >= 4 and pod in value:
        value = value.replace(pod, "*")
    ip = wl.pod_ip
    if ip and ip in value:
        value = value.replace(ip, "*")
    return value


def exe_pattern(event: Event) -> str:
    p = event.process
    assert p is not None
    return path_pattern(own(p.exe or p.comm, event.workload))


def args_shape(event: Event) -> str:
    p = event.process
    assert p is not None
    wl = event.workload
    if (len(wl.pod) >= 4 or wl.pod_ip) and p.args:
        return arg_shape([own(a, wl) for a in p.args])
    return arg_shape(p.args)


def file_pattern(event: Event) -> str:
    f = event.file
    assert f is not None
    return path_pattern(own(f.path, event.workload))


# --- matching ---------------------------------------------------------------------------


class Patterns:
    """A set of patterns: exact values in a set, wildcard patterns as linear-time globs
    (:class:`schemas.glob.Glob`, ``*`` the only wildcard), answers for wildcard lookups cached (values repeat a
    lot). Both the patterns (learned from what a workload does) and the values can be chosen by an attacker:
    no match may backtrack."""

    __slots__ = ("_cache", "_globs", "exact", "wild")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.exact: set[str] = set()
        self.wild: list[str] = []
        self._globs: list[Glob] = []
        self._cache: dict[str, bool] = {}
        for p in patterns:
            self.add(p)

    def add(self, pattern: str) -> None:
        if "*" in pattern:
            self.wild.append(pattern)
            self._globs.append(compile_glob(pattern, "stars"))
            self._cache.clear()
        else:
            self.exact.add(pattern)

    def match(self, value: str) -> bool:
        if value in self.exact:
            return True
        if not self._globs:
            return False
        hit = self._cache.get(value)
        if hit is None:
            hit = any(g.match(value) for g in self._globs)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[value] = hit
        return hit
