"""Kernel records -> :class:`schemas.records.Event`.

Identity (documented in README.md):

* ``exec_id`` = base64 of ``"{node}:{pid}:{start}"`` where ``start`` is the thread group
  leader's ``start_boottime`` in ns. It names a process from fork to exit, is computed
  in the kernel for the actor of every record (no user-space process table to lose),
  and ``parent_exec_id`` is the same for the parent. Successive execs of one process
  share its exec_id; each exec is its own ``process_exec`` event.
* ``event_id`` = ``"{node}:{cpu:x}:{seq:x}:{ktime:x}"``: the per-CPU sequence of the
  record in the kernel plus its boot-clock time: unique, and the same if the record
  is decoded twice.
* ``time`` = the record's CLOCK_BOOTTIME ns plus a measured boot->UTC offset.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from struct import error as struct_error

import msgspec
import orjson

from schemas.records import Dns, Event, EventKind, File, Network, Privilege, Process, Workload
from sensors.ebpf import layout
from sensors.ebpf.batch import JsonItem
from sensors.publisher import encode_event

__all__ = ["BootClock", "DecodeStats", "Decoder", "JsonItem", "exec_id", "parse_dns_question"]

_O_WRITE = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000

_PTRACE = {
    0: "PTRACE_TRACEME",
    4: "PTRACE_POKETEXT",
    5: "PTRACE_POKEDATA",
    6: "PTRACE_POKEUSER",
    13: "PTRACE_SETREGS",
    15: "PTRACE_SETFPREGS",
    16: "PTRACE_ATTACH",
    0x4205: "PTRACE_SETREGSET",
    0x4206: "PTRACE_SEIZE",
}
_BPF_CMDS = {5: "BPF_PROG_LOAD", 8: "BPF_PROG_ATTACH", 17: "BPF_RAW_TRACEPOINT_OPEN", 28: "BPF_LINK_CREATE"}
_NS_FLAGS = {
    0x00020000: "CLONE_NEWNS",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET",
    0x00000080: "CLONE_NEWTIME",
}
_OPS = {
    1: "setuid",
    2: "setgid",
    3: "setreuid",
    4: "setregid",
    5: "setresuid",
    6: "setresgid",
    7: "setfsuid",
    8: "setfsgid",
    9: "capset",
    10: "ptrace",
    11: "unshare",
    12: "setns",
    13: "mount",
    14: "move_mount",
    15: "memfd_create",
    16: "bpf",
    17: "init_module",
    18: "finit_module",
    19: "delete_module",
    20: "link",
    21: "symlink",
    22: "packet_socket",
    23: "io_uring_setup",
}
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 10: "SOCK_PACKET"}
_QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    252: "AXFR",
    255: "ANY",
}
_PROTO = {6: "tcp", 17: "udp"}
_AF_INET = 2
_ENC = msgspec.json.Encoder()
# only what the hot path needs; pad bytes (x) create no Python objects
_HDR_FAST = struct.Struct("<4xIQQ")  # cpu, seq, ktime
_OPEN_FAST = struct.Struct("<4xIQQ72xII4xH")  # + flags, mode, path_len
_EXIT_FAST = struct.Struct("<4xIQQ72xi")  # + code
_NET_KINDS = {
    layout.T_CONNECT: (b"net_connect", b"egress"),
    layout.T_ACCEPT: (b"net_accept", b"ingress"),
    layout.T_LISTEN: (b"net_listen", b"listen"),
}
# bytes that a JSON string cannot hold as they are (or that may not be UTF-8)
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def exec_id(node: str, pid: int, start_ns: int) -> str:
    """The exec_id of a process: base64 of ``"{node}:{pid}:{start_ns}"``."""
    return base64.b64encode(f"{node}:{pid}:{start_ns}".encode()).decode()


def _flag_names(value: int, names: dict[int, str]) -> str:
    return "|".join(name for bit, name in names.items() if value & bit)


def parse_dns_question(payload: bytes) -> tuple[str, str] | None:
    """(name, type) of the first question of a DNS query message, or None."""
    if len(payload) < 17:
        return None
    flags = int.from_bytes(payload[2:4], "big")
    qdcount = int.from_bytes(payload[4:6], "big")
    if flags & 0x8000 or qdcount == 0:  # a response, or no question
        return None
    labels: list[str] = []
    pos = 12
    while pos < len(payload):
        n = payload[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0 or pos + 1 + n > len(payload):  # no compression in a question
            return None
        labels.append(payload[pos + 1 : pos + 1 + n].decode("ascii", "backslashreplace"))
        pos += 1 + n
    else:
        return None
    if pos + 2 > len(payload):
        return None
    qtype = int.from_bytes(payload[pos : pos + 2], "big")
    return ".".join(labels) or ".", _QTYPES.get(qtype, f"TYPE{qtype}")


class BootClock:
    """Converts CLOCK_BOOTTIME ns (the kernel's record time) to UTC ns."""

    def __init__(self) -> None:
        self.offset = 0
        self.calibrate()

    def calibrate(self) -> int:
        # The pair with the tightest bracket gives the best offset (NTP may slew it, so
        # the sensor calls this again periodically).
        best = None
        for _ in range(5):
            b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            rt = time.time_ns()
            b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            if best is None or b1 - b0 < best[0]:
                best = (b1 - b0, rt - (b0 + b1) // 2)
        assert best is not None
        self.offset = best[1]
        return self.offset


@dataclass
class DecodeStats:
    """User-side counters of the decoder."""

    records: int = 0
    events: int = 0
    errors: int = 0
    #: per-CPU records that could not become events (malformed)
    per_cpu_errors: dict[int, int] = field(default_factory=dict)
    cgroup_records: int = 0


class Decoder:
    """Turns one ring-buffer record into an Event (or updates the cgroup index)."""

    def __init__(
        self,
        node: str,
        clock: BootClock,
        workload_of: Callable[[int, int], tuple[Workload, bytes, float | None]],
        *,
        generation: Callable[[], int] = lambda: 0,
        monotonic: Callable[[], float] = time.monotonic,
        on_cgroup: Callable[[int, int, int, str], None] | None = None,
    ) -> None:
        self.node = node
        self.clock = clock
        self.workload_of = workload_of
        self._generation = generation
        self._mono = monotonic
        self._frag_gen = generation()
        self._frag_offset = clock.offset
        self.on_cgroup = on_cgroup
        self._stats = DecodeStats()
        self._ids: dict[tuple[int, int], str] = {}
        self._comms: dict[bytes, str] = {}
        self._fragments: dict[bytes, tuple[bytes, bytes, float | None]] = {}
        # fast-path records, counted here and folded into stats on read (cheaper)
        self._fast_records = 0
        self._node_json = orjson.dumps(node)
        self._node_id = self._node_json[1:-1]
        self._fast: dict[int, Callable[[memoryview, int, int], JsonItem]] = {
            layout.T_OPEN: self._open_json,
            layout.T_FORK: self._fork_json,
            layout.T_EXIT: self._exit_json,
            layout.T_CONNECT: self._net_json,
            layout.T_ACCEPT: self._net_json,
            layout.T_LISTEN: self._net_json,
        }
        self._dispatch: dict[int, Callable[[memoryview, int, int], tuple[Event, bytes] | None]] = {
            layout.T_EXEC: self._exec,
            layout.T_FORK: self._fork,
            layout.T_EXIT: self._exit,
            layout.T_OPEN: self._open,
            layout.T_CONNECT: self._net,
            layout.T_ACCEPT: self._net,
            layout.T_LISTEN: self._net,
            layout.T_DNS: self._dns,
            layout.T_PRIV: self._priv,
            layout.T_CGROUP_MKDIR: self._cgroup,
            layout.T_CGROUP_RMDIR: self._cgroup,
        }

    @property
    def stats(self) -> DecodeStats:
        """Counters (the fast path's are folded in on read)."""
        if self._fast_records:
            self._stats.records += self._fast_records
            self._stats.events += self._fast_records
            self._fast_records = 0
        return self._stats

    # -- shared pieces ------------------------------------------------------------------

    def _exec_id(self, pid: int, start: int) -> str:
        key = (pid, start)
        eid = self._ids.get(key)
        if eid is None:
            if len(self._ids) > 200_000:
                self._ids.clear()
            eid = self._ids[key] = exec_id(self.node, pid, start)
        return eid

    def _comm(self, raw: bytes) -> str:
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 50_000:
                self._comms.clear()
            comm = self._comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return comm

    def decode(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes] | None:
        """(event, Kafka key) of the record at ``data[off:off+length]``, or None when the
        record carries no event (cgroup bookkeeping) or is malformed (counted)."""
        self.stats.records += 1
        rtype = data[off] | (data[off + 1] << 8)
        fn = self._dispatch.get(rtype)
        try:
            if fn is None or length < layout.HDR.size:
                raise ValueError(f"record type {rtype} of {length} bytes")
            out = fn(data, off, length)
        except (ValueError, IndexError, UnicodeDecodeError, TypeError, struct_error):
            self.stats.errors += 1
            cpu = int.from_bytes(data[off + 4 : off + 8], "little") if length >= 8 else 0
            self.stats.per_cpu_errors[cpu] = self.stats.per_cpu_errors.get(cpu, 0) + 1
            return None
        if out is not None:
            self.stats.events += 1
        return out

    def _process(self, h: tuple, **extra: object) -> tuple[Process, Workload, bytes]:
        # h: type, size, cpu, seq, ktime, pid, tid, start, ppid, uid, pstart, cgroup,
        #    cgroup_v1, mnt_ns, pid_ns, comm
        workload, key, _ = self.workload_of(h[11], h[12])
        proc = Process(
            pid=h[5],
            tid=h[6],
            ppid=h[8],
            uid=h[9],
            comm=self._comm(h[15]),
            exec_id=self._exec_id(h[5], h[7]),
            parent_exec_id=self._exec_id(h[8], h[10]) if h[8] else "",
            start_time=h[7] + self.clock.offset,
            cgroup_id=h[11],
            mnt_ns=h[13],
            pid_ns=h[14],
            **extra,  # type: ignore[arg-type]
        )
        return proc, workload, key

    def _event(self, h: tuple, kind: EventKind, workload: Workload, **blocks: object) -> Event:
        return Event(
            event_id=f"{self.node}:{h[2]:x}:{h[3]:x}:{h[4]:x}",
            time=h[4] + self.clock.offset,
            node=self.node,
            source="ebpf",
            kind=kind,
            workload=workload,
            **blocks,  # type: ignore[arg-type]
        )

    # -- JSON fast path -----------------------------------------------------------------
    #
    # For the kinds that come in floods (file_open, process_fork/exit, net_*), the JSON is
    # written straight from the record: the workload and process blocks of a (process,
    # cgroup) pair are encoded once and cached as bytes, so an event costs one unpack and
    # one format. Everything else goes through Event objects. tests/sensors/ebpf/test_decode
    # checks both paths give the same event.

    def workload_fragment(self, cgroup: int, cgroup_v1: int) -> tuple[bytes, bytes, float | None]:
        """b'"workload":{..}', the Kafka key and the expiry (monotonic, or None) of the
        workload of a record's cgroups: what the native consumer caches per cgroup pair."""
        workload, key, expires = self.workload_of(cgroup, cgroup_v1)
        return b'"workload":' + _ENC.encode(workload), key, expires

    def count_fast(self, n: int) -> None:
        """Count ``n`` records the native consumer turned into events."""
        self._fast_records += n

    def _fragment(self, data: memoryview, off: int) -> tuple[bytes, bytes]:
        """b'"workload":{..},"process":{..' (process object left open) and the Kafka key."""
        # pid .. comm: everything process-specific (the tid too: threads share the rest)
        raw = bytes(data[off + 24 : off + 96])
        hit = self._fragments.get(raw)
        if (
            hit is not None
            and (hit[2] is None or hit[2] > self._mono())
            and self.clock.offset == self._frag_offset
        ):
            return hit[0], hit[1]
        h = layout.HDR.unpack_from(data, off)
        workload, key, expires = self.workload_of(h[11], h[12])
        proc, _, _ = self._process(h)
        frag = b'"workload":' + _ENC.encode(workload) + b',"process":' + _ENC.encode(proc)[:-1]
        gen = self._generation()
        # start_time is in the fragment: a recalibrated clock must not keep old ones
        if len(self._fragments) > 100_000 or gen != self._frag_gen or self.clock.offset != self._frag_offset:
            self._fragments.clear()
            self._frag_gen = gen
            self._frag_offset = self.clock.offset
        self._fragments[raw] = (frag, key, expires)
        return frag, key

    def decode_json(self, data: memoryview, off: int, length: int) -> JsonItem | None:
        """Like :meth:`decode`, but the event as JSON bytes: (value, key, ts_ms, cpu)."""
        fast = self._fast.get(data[off])  # type < 256: the low byte is enough
        if fast is None:
            item = self.decode(data, off, length)
            if item is None:
                return None
            ev, key = item
            return (
                encode_event(ev),
                key,
                ev.time // 1_000_000,
                int.from_bytes(data[off + 4 : off + 8], "little"),
            )
        self._fast_records += 1
        try:
            return fast(data, off, length)
        except (ValueError, IndexError, UnicodeDecodeError, TypeError, struct_error):
            self.stats.errors += 1
            self._fast_records -= 1
            self.stats.records += 1
            cpu = int.from_bytes(data[off + 4 : off + 8], "little")
            self.stats.per_cpu_errors[cpu] = self.stats.per_cpu_errors.get(cpu, 0) + 1
            return None

    def _open_json(self, data: memoryview, off: int, length: int) -> JsonItem:
        cpu, seq, ktime, flags, mode, path_len = _OPEN_FAST.unpack_from(data, off)
        if layout.OPEN.size + path_len > length:
            raise ValueError("open record shorter than its path")
        p = off + layout.OPEN.size
        raw = bytes(data[p : p + path_len])
        if _NEEDS_ESCAPE.search(raw) is None:
            path = b'"' + raw + b'"'
        else:
            path = orjson.dumps(_safe(raw.decode("utf-8", "surrogateescape")))
        frag, key = self._fragment(data, off)
        t = ktime + self.clock.offset
        value = (
            b'{"schema_version":1,"event_id":"%s:%x:%x:%x","time":%d,"node":%s,"source":"ebpf",'
            b'"kind":"file_open",%s},"file":{"path":%s,"flags":%d,"mode":%d,"write":%s}}'
            % (
                self._node_id, cpu, seq, ktime, t, self._node_json,
                frag, path, flags, mode, b"true" if flags & _O_WRITE else b"false",
            )
        )  # fmt: skip
        return value, key, t // 1_000_000, cpu

    def _fork_json(self, data: memoryview, off: int, length: int) -> JsonItem:
        cpu, seq, ktime = _HDR_FAST.unpack_from(data, off)
        frag, key = self._fragment(data, off)
        t = ktime + self.clock.offset
        value = (
            b'{"schema_version":1,"event_id":"%s:%x:%x:%x","time":%d,"node":%s,"source":"ebpf",'
            b'"kind":"process_fork",%s}}' % (self._node_id, cpu, seq, ktime, t, self._node_json, frag)
        )
        return value, key, t // 1_000_000, cpu

    def _exit_json(self, data: memoryview, off: int, length: int) -> JsonItem:
        cpu, seq, ktime, status = _EXIT_FAST.unpack_from(data, off)
        code = (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)
        frag, key = self._fragment(data, off)
        t = ktime + self.clock.offset
        value = (
            b'{"schema_version":1,"event_id":"%s:%x:%x:%x","time":%d,"node":%s,"source":"ebpf",'
            b'"kind":"process_exit",%s,"exit_code":%d}}'
            % (self._node_id, cpu, seq, ktime, t, self._node_json, frag, code)
        )
        return value, key, t // 1_000_000, cpu

    def _net_json(self, data: memoryview, off: int, length: int) -> JsonItem:
        r = layout.NET.unpack_from(data, off)
        family, proto, sport, dport, saddr, daddr = r[16:22]
        if family == _AF_INET:
            fam, src, dst = (
                b"ipv4",
                socket.inet_ntop(socket.AF_INET, saddr[:4]),
                socket.inet_ntop(socket.AF_INET, daddr[:4]),
            )
        else:
            fam, src, dst = (
                b"ipv6",
                socket.inet_ntop(socket.AF_INET6, saddr),
                socket.inet_ntop(socket.AF_INET6, daddr),
            )
        rtype = r[0]
        kind, direction = _NET_KINDS[rtype]
        frag, key = self._fragment(data, off)
        t = r[4] + self.clock.offset
        value = (
            b'{"schema_version":1,"event_id":"%s:%x:%x:%x","time":%d,"node":%s,"source":"ebpf","kind":"%s",'
            b'%s},"network":{"protocol":"%s","family":"%s","src_ip":"%s","src_port":%d,'
            b'"dst_ip":"%s","dst_port":%d,"direction":"%s"}}'
            % (
                self._node_id, r[2], r[3], r[4], t, self._node_json, kind,
                frag,
                _PROTO.get(proto, str(proto)).encode(),
                fam,
                src.encode(),
                sport,
                dst.encode(),
                dport,
                direction,
            )
        )  # fmt: skip
        return value, key, t // 1_000_000, r[2]

    # -- one function per record type ---------------------------------------------------

    def _exec(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.EXEC.unpack_from(data, off)
        euid, gid, egid, flags, exe_len, cwd_len, args_len, _file_len = r[16:24]
        p = off + layout.EXEC.size
        if layout.EXEC.size + exe_len + cwd_len + args_len > length:
            raise ValueError("exec record shorter than its strings")
        exe = bytes(data[p : p + exe_len]).decode("utf-8", "surrogateescape")
        p += exe_len
        cwd = bytes(data[p : p + cwd_len]).decode("utf-8", "surrogateescape")
        p += cwd_len
        raw_args = bytes(data[p : p + args_len])
        if raw_args.endswith(b"\0"):
            raw_args = raw_args[:-1]
        args = [a.decode("utf-8", "surrogateescape") for a in raw_args.split(b"\0")] if raw_args else []
        if flags & layout.EXEC_EXE_DELETED:
            exe += " (deleted)"
        proc, workload, key = self._process(
            r,
            euid=euid,
            gid=gid,
            egid=egid,
            exe=_safe(exe),
            args=[_safe(a) for a in args[:1024]],
            cwd=_safe(cwd),
            tty=bool(flags & layout.EXEC_TTY),
            stdio_socket=bool(flags & (layout.EXEC_STDIN_SOCK | layout.EXEC_STDOUT_SOCK)),
        )
        return self._event(r, EventKind.PROCESS_EXEC, workload, process=proc), key

    def _fork(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.HDR.unpack_from(data, off)
        proc, workload, key = self._process(r)
        return self._event(r, EventKind.PROCESS_FORK, workload, process=proc), key

    def _exit(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.EXIT.unpack_from(data, off)
        status = r[16]
        code = (status >> 8) & 0xFF if status & 0x7F == 0 else -(status & 0x7F)
        proc, workload, key = self._process(r, exit_code=code)
        return self._event(r, EventKind.PROCESS_EXIT, workload, process=proc), key

    def _open(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.OPEN.unpack_from(data, off)
        flags, mode, _fd, path_len = r[16], r[17], r[18], r[19]
        p = off + layout.OPEN.size
        if layout.OPEN.size + path_len > length:
            raise ValueError("open record shorter than its path")
        path = bytes(data[p : p + path_len]).decode("utf-8", "surrogateescape")
        proc, workload, key = self._process(r)
        f = File(path=_safe(path), flags=flags, mode=mode, write=bool(flags & _O_WRITE))
        return self._event(r, EventKind.FILE_OPEN, workload, process=proc, file=f), key

    def _net(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.NET.unpack_from(data, off)
        family, proto, sport, dport, saddr, daddr = r[16:22]
        if family == _AF_INET:
            fam, src, dst = (
                "ipv4",
                socket.inet_ntop(socket.AF_INET, saddr[:4]),
                socket.inet_ntop(socket.AF_INET, daddr[:4]),
            )
        else:
            fam, src, dst = (
                "ipv6",
                socket.inet_ntop(socket.AF_INET6, saddr),
                socket.inet_ntop(socket.AF_INET6, daddr),
            )
        rtype = r[0]
        if rtype == layout.T_CONNECT:
            kind, direction = EventKind.NET_CONNECT, "egress"
        elif rtype == layout.T_ACCEPT:
            kind, direction = EventKind.NET_ACCEPT, "ingress"
        else:
            kind, direction = EventKind.NET_LISTEN, "listen"
        net = Network(
            protocol=_PROTO.get(proto, str(proto)),
            family=fam,
            src_ip=src,
            src_port=sport,
            dst_ip=dst,
            dst_port=dport,
            direction=direction,
        )
        proc, workload, key = self._process(r)
        return self._event(r, kind, workload, process=proc, network=net), key

    def _dns(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes] | None:
        r = layout.DNS.unpack_from(data, off)
        family, _dport, dlen, _proto, daddr = r[16:21]
        p = off + layout.DNS.size
        q = parse_dns_question(bytes(data[p : p + min(dlen, length - layout.DNS.size)]))
        if q is None:
            raise ValueError("not a DNS query")
        if family == _AF_INET:
            server = socket.inet_ntop(socket.AF_INET, daddr[:4])
        else:
            server = socket.inet_ntop(socket.AF_INET6, daddr)
        proc, workload, key = self._process(r)
        dns = Dns(query=_safe(q[0]), qtype=q[1], server_ip=server)
        return self._event(r, EventKind.DNS_QUERY, workload, process=proc, dns=dns), key

    def _priv(self, data: memoryview, off: int, length: int) -> tuple[Event, bytes]:
        r = layout.PRIV.unpack_from(data, off)
        op, l1, l2, l3, ret, arg0, arg1, old_uid, new_uid, old_gid, new_gid, old_caps, new_caps = r[16:29]
        p = off + layout.PRIV.size
        if layout.PRIV.size + l1 + l2 + l3 > length:
            raise ValueError("privilege record shorter than its strings")
        s1 = bytes(data[p : p + l1]).decode("utf-8", "surrogateescape")
        s2 = bytes(data[p + l1 : p + l1 + l2]).decode("utf-8", "surrogateescape")
        s3 = bytes(data[p + l1 + l2 : p + l1 + l2 + l3]).decode("utf-8", "surrogateescape")
        if op in (20, 21):  # link / symlink: a file_link event, the new link and what it points to
            proc, workload, key = self._process(r)
            link = File(path=_safe(s2), target=_safe(s1))
            return self._event(r, EventKind.FILE_LINK, workload, process=proc, file=link), key
        name = _OPS.get(op, f"op{op}")
        priv: dict[str, object] = {"op": name, "result": ret}
        if op <= 8:  # set*id: effective ids
            priv.update(old_uid=old_uid, new_uid=new_uid, old_gid=old_gid, new_gid=new_gid)
        elif op == 9:
            priv.update(caps=new_caps, detail=f"effective {old_caps:#x} -> {new_caps:#x}")
        elif op == 10:
            priv.update(target_pid=arg1 & 0xFFFFFFFF, flags=arg0, detail=_PTRACE.get(arg0, str(arg0)))
        elif op == 11:
            priv.update(flags=arg0, detail=_flag_names(arg0, _NS_FLAGS))
        elif op == 12:
            priv.update(flags=arg1, detail=_flag_names(arg1, _NS_FLAGS) or "any")
        elif op == 13:
            priv.update(flags=arg0, detail=f"{s1} on {s2} type {s3}")
        elif op == 14:
            priv.update(flags=arg0, detail=s2)
        elif op == 15:
            priv.update(flags=arg1, detail=s1)
        elif op == 16:
            priv.update(flags=arg0, detail=_BPF_CMDS.get(arg0, str(arg0)))
        elif op == 22:  # socket(AF_PACKET, type, protocol): the type without SOCK_NONBLOCK/SOCK_CLOEXEC
            kind = arg1 & 0xF
            priv.update(flags=arg1, detail=f"AF_PACKET {_SOCK_TYPES.get(kind, str(kind))}")
        elif op == 23:  # io_uring_setup(entries, params)
            priv.update(flags=arg0, detail=f"{arg0} entries")
        else:
            priv.update(detail=s1)
        if isinstance(priv.get("detail"), str):
            priv["detail"] = _safe(priv["detail"])  # type: ignore[arg-type]
        proc, workload, key = self._process(r)
        block = Privilege(**priv)  # type: ignore[arg-type]
        return self._event(r, EventKind.PRIVILEGE_CHANGE, workload, process=proc, privilege=block), key

    def _cgroup(self, data: memoryview, off: int, length: int) -> None:
        r = layout.CGROUP.unpack_from(data, off)
        cgroup_id, hierarchy, path_len = r[16], r[17], r[18]
        p = off + layout.CGROUP.size
        path = bytes(data[p : p + path_len]).decode("utf-8", "surrogateescape")
        self.stats.cgroup_records += 1
        if self.on_cgroup is not None:
            self.on_cgroup(r[0], hierarchy, cgroup_id, path)
        return None


def _safe(text: str) -> str:
    """Make undecodable bytes JSON-safe (kept as \\xNN escapes)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
