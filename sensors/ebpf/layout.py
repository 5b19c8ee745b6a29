"""The binary layout of the records in ``cadr.h``, as ``struct`` formats.

Each record type has one precompiled :class:`struct.Struct` covering its header and fixed
part, so decoding a record is one ``unpack_from`` call plus slicing its strings.
``tests/sensors/ebpf/test_layout.py`` checks every size and offset here against the BTF
of the compiled object.
"""

from __future__ import annotations

import struct

__all__ = [
    "CGROUP",
    "CONFIG",
    "DNS",
    "EXEC",
    "EXIT",
    "FORK",
    "HDR",
    "NET",
    "OPEN",
    "PRIV",
    "RECORDS",
    "STATS",
    "STATS_FIELDS",
    "T_ACCEPT",
    "T_CGROUP_MKDIR",
    "T_CGROUP_RMDIR",
    "T_CONNECT",
    "T_DNS",
    "T_EXEC",
    "T_EXIT",
    "T_FORK",
    "T_LISTEN",
    "T_OPEN",
    "T_PRIV",
    "pack_config",
]

T_EXEC = 1
T_FORK = 2
T_EXIT = 3
T_OPEN = 4
T_CONNECT = 5
T_ACCEPT = 6
T_LISTEN = 7
T_DNS = 8
T_PRIV = 9
T_CGROUP_MKDIR = 10
T_CGROUP_RMDIR = 11


def _spec(*fields: tuple[str, str]) -> tuple[struct.Struct, tuple[tuple[str, str], ...]]:
    return struct.Struct("<" + "".join(fmt for _, fmt in fields)), fields


#: ``struct cadr_hdr`` member by member: (C member name, struct format)
HDR_FIELDS: tuple[tuple[str, str], ...] = (
    ("type", "H"),
    ("size", "H"),
    ("cpu", "I"),
    ("seq", "Q"),
    ("ktime", "Q"),
    ("pid", "I"),
    ("tid", "I"),
    ("start", "Q"),
    ("ppid", "I"),
    ("uid", "I"),
    ("pstart", "Q"),
    ("cgroup", "Q"),
    ("cgroup_v1", "Q"),
    ("mnt_ns", "I"),
    ("pid_ns", "I"),
    ("comm", "16s"),
)
_H = ("h", "".join(fmt for _, fmt in HDR_FIELDS))

HDR, _ = _spec(*HDR_FIELDS)
EXEC, EXEC_FIELDS = _spec(
    _H, ("euid", "I"), ("gid", "I"), ("egid", "I"), ("flags", "I"),
    ("exe_len", "H"), ("cwd_len", "H"), ("args_len", "H"), ("file_len", "H"),
)  # fmt: skip
FORK, FORK_FIELDS = _spec(_H)
EXIT, EXIT_FIELDS = _spec(_H, ("code", "i"), ("pad", "I"))
OPEN, OPEN_FIELDS = _spec(
    _H, ("flags", "I"), ("mode", "I"), ("fd", "i"), ("path_len", "H"), ("reason", "B"), ("trunc", "B"),
    ("ino", "Q"), ("dev", "I"), ("fs_magic", "I"),
)  # fmt: skip
NET, NET_FIELDS = _spec(
    _H, ("family", "H"), ("proto", "H"), ("sport", "H"), ("dport", "H"),
    ("saddr", "16s"), ("daddr", "16s"), ("ret", "i"), ("fd", "I"),
)  # fmt: skip
DNS, DNS_FIELDS = _spec(_H, ("family", "H"), ("dport", "H"), ("len", "H"), ("proto", "H"), ("daddr", "16s"))
PRIV, PRIV_FIELDS = _spec(
    _H, ("op", "H"), ("s1_len", "H"), ("s2_len", "H"), ("s3_len", "H"), ("ret", "q"), ("arg0", "Q"),
    ("arg1", "Q"), ("old_uid", "I"), ("new_uid", "I"), ("old_gid", "I"), ("new_gid", "I"),
    ("old_caps", "Q"), ("new_caps", "Q"),
)  # fmt: skip
CGROUP, CGROUP_FIELDS = _spec(_H, ("id", "Q"), ("hierarchy", "i"), ("path_len", "H"), ("pad", "H"))
CONFIG, CONFIG_FIELDS = _spec(
    ("self_ns_dev", "Q"), ("self_ns_ino", "Q"), ("self_tgid", "I"), ("wakeup_bytes", "I"),
    ("v1_subsys", "I"), ("args_max", "I"), ("features", "I"), ("dns_ports", "4H"), ("pad", "I"),
)  # fmt: skip

#: C struct name -> (Struct, fields): what the BTF check walks
RECORDS = {
    "cadr_hdr": (HDR, HDR_FIELDS),
    "cadr_exec": (EXEC, EXEC_FIELDS),
    "cadr_fork": (FORK, FORK_FIELDS),
    "cadr_exit": (EXIT, EXIT_FIELDS),
    "cadr_open": (OPEN, OPEN_FIELDS),
    "cadr_net": (NET, NET_FIELDS),
    "cadr_dns": (DNS, DNS_FIELDS),
    "cadr_priv": (PRIV, PRIV_FIELDS),
    "cadr_cgroup": (CGROUP, CGROUP_FIELDS),
    "cadr_config": (CONFIG, CONFIG_FIELDS),
}

STATS_FIELDS = (
    "seq", "events", "drops", "bytes", "path_trunc", "open_seen", "open_suppressed", "errors", "drops_not_full",
)  # fmt: skip
STATS = struct.Struct("<" + "Q" * len(STATS_FIELDS))
RECORDS["cadr_stats"] = (STATS, tuple((name, "Q") for name in STATS_FIELDS))

FEAT_PROC = 1 << 0
FEAT_FILE = 1 << 1
FEAT_NET = 1 << 2
FEAT_DNS = 1 << 3
FEAT_PRIV = 1 << 4
FEAT_ALL = FEAT_PROC | FEAT_FILE | FEAT_NET | FEAT_DNS | FEAT_PRIV

EXEC_TTY = 1 << 0
EXEC_STDIN_SOCK = 1 << 1
EXEC_STDOUT_SOCK = 1 << 2
EXEC_STDERR_SOCK = 1 << 3
EXEC_EXE_DELETED = 1 << 4
EXEC_ARGS_TRUNC = 1 << 5
EXEC_PATH_TRUNC = 1 << 6

OPEN_WRITE = 1
OPEN_SENSITIVE = 2
OPEN_FIRST = 3

ARGS_MAX = 4096
SENSITIVE_KEY = 64
DNS_PORTS = 4


def pack_config(
    *,
    self_ns_dev: int,
    self_ns_ino: int,
    self_tgid: int,
    wakeup_bytes: int,
    v1_subsys: int,
    args_max: int,
    features: int,
    dns_ports: tuple[int, ...] | list[int],
) -> bytes:
    """The bytes of ``struct cadr_config`` for the ``.rodata.cfg`` map."""
    ports = [int(p) for p in dns_ports][:DNS_PORTS]
    ports += [0] * (DNS_PORTS - len(ports))
    return CONFIG.pack(
        self_ns_dev,
        self_ns_ino,
        self_tgid,
        wakeup_bytes,
        v1_subsys,
        max(0, min(args_max, ARGS_MAX - 1)),
        features,
        *ports,
        0,
    )
