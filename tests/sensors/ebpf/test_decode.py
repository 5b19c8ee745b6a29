"""Kernel records -> events, without a kernel: records are packed with the layout structs."""

from __future__ import annotations

import base64
import socket
import struct

import pytest

from schemas.codec import decode_event
from schemas.records import Workload
from sensors.ebpf import layout
from sensors.ebpf.decode import BootClock, Decoder, exec_id, parse_dns_question
from sensors.publisher import encode_event

NODE = "node-a"
WL = Workload(cluster="c", namespace="shop", pod="web-1", container_id="ab" * 32)
KEY = b"c/shop/Pod/web-1"


class FixedClock(BootClock):
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def calibrate(self) -> int:
        return self.offset


def hdr(rtype: int, size: int, **kw: object) -> tuple:
    h = dict(
        type=rtype,
        size=size,
        cpu=1,
        seq=7,
        ktime=5_000,
        pid=100,
        tid=101,
        start=900,
        ppid=50,
        uid=1000,
        pstart=800,
        cgroup=42,
        cgroup_v1=0,
        mnt_ns=4026531840,
        pid_ns=4026531836,
        comm=b"bash\0\0",
    )
    h.update(kw)
    return tuple(h.values())


def decoder(**kw: object) -> tuple[Decoder, list]:
    cgroups: list = []
    d = Decoder(
        NODE,
        FixedClock(1_700_000_000_000_000_000),
        lambda cg, v1: (WL, KEY, None),
        on_cgroup=lambda *a: cgroups.append(a),
    )
    return d, cgroups


def run(d: Decoder, raw: bytes):  # type: ignore[no-untyped-def]
    return d.decode(memoryview(raw), 0, len(raw))


def test_exec_id_is_base64_of_node_pid_start() -> None:
    eid = exec_id("n1", 42, 123456789)
    assert base64.b64decode(eid) == b"n1:42:123456789"


def test_exec_record() -> None:
    exe, cwd, args, fname = b"/usr/bin/curl", b"/tmp", b"curl\0-s\0http://x\0", b"/usr/bin/curl"
    size = layout.EXEC.size + len(exe) + len(cwd) + len(args) + len(fname)
    flags = layout.EXEC_TTY | layout.EXEC_STDOUT_SOCK
    raw = layout.EXEC.pack(
        *hdr(layout.T_EXEC, size), 0, 1000, 1000, flags, len(exe), len(cwd), len(args), len(fname)
    )
    raw += exe + cwd + args + fname
    d, _ = decoder()
    ev, key = run(d, raw)
    assert key == KEY and ev.kind == "process_exec" and ev.source == "ebpf" and ev.node == NODE
    p = ev.process
    assert (p.pid, p.tid, p.ppid, p.uid, p.euid, p.gid, p.egid) == (100, 101, 50, 1000, 0, 1000, 1000)
    assert (p.exe, p.cwd, p.args, p.comm) == ("/usr/bin/curl", "/tmp", ["curl", "-s", "http://x"], "bash")
    assert p.tty and p.stdio_socket
    assert p.exec_id == exec_id(NODE, 100, 900) and p.parent_exec_id == exec_id(NODE, 50, 800)
    assert (p.cgroup_id, p.mnt_ns, p.pid_ns) == (42, 4026531840, 4026531836)
    # boot-time ns + measured offset = UTC ns
    assert ev.time == 1_700_000_000_000_005_000 and p.start_time == 1_700_000_000_000_000_900
    assert ev.event_id == f"{NODE}:1:7:{5000:x}"
    assert ev.workload == WL
    assert decode_event(encode_event(ev)) == ev


def test_exec_of_a_deleted_file_and_undecodable_bytes() -> None:
    exe, args = b"/memfd:x", b"a\xff\0"
    size = layout.EXEC.size + len(exe) + len(args)
    raw = layout.EXEC.pack(
        *hdr(layout.T_EXEC, size), 0, 0, 0, layout.EXEC_EXE_DELETED, len(exe), 0, len(args), 0
    )
    ev, _ = run(decoder()[0], raw + exe + args)
    assert ev.process.exe == "/memfd:x (deleted)"
    assert ev.process.args == ["a\\xff"]
    decode_event(encode_event(ev))  # still valid JSON and schema


def test_fork_exit_open() -> None:
    d, _ = decoder()
    fork, _ = run(d, layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size)))
    assert fork.kind == "process_fork" and fork.process.parent_exec_id == exec_id(NODE, 50, 800)
    ex, _ = run(d, layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 3 << 8, 0))
    assert ex.kind == "process_exit" and ex.process.exit_code == 3
    killed, _ = run(d, layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 9, 0))
    assert killed.process.exit_code == -9
    path = b"/etc/passwd"
    raw = layout.OPEN.pack(
        *hdr(layout.T_OPEN, layout.OPEN.size + len(path)),
        0o1101,
        0o100644,
        3,
        len(path),
        layout.OPEN_WRITE,
        0,
        7,
        8,
        0xEF53,
    )
    op, _ = run(d, raw + path)
    assert (
        op.kind == "file_open" and op.file.path == "/etc/passwd" and op.file.write and op.file.flags == 0o1101
    )


def test_network_records() -> None:
    d, _ = decoder()
    v4 = lambda ip: socket.inet_pton(socket.AF_INET, ip) + b"\0" * 12  # noqa: E731
    raw = layout.NET.pack(
        *hdr(layout.T_CONNECT, layout.NET.size), 2, 6, 40000, 443, v4("10.0.0.5"), v4("1.2.3.4"), 0, 5
    )
    ev, _ = run(d, raw)
    n = ev.network
    assert ev.kind == "net_connect" and (n.protocol, n.family, n.direction) == ("tcp", "ipv4", "egress")
    assert (n.src_ip, n.src_port, n.dst_ip, n.dst_port) == ("10.0.0.5", 40000, "1.2.3.4", 443)
    v6 = socket.inet_pton(socket.AF_INET6, "::1")
    raw = layout.NET.pack(*hdr(layout.T_ACCEPT, layout.NET.size), 10, 6, 8080, 50000, v6, v6, 4, 4)
    ev, _ = run(d, raw)
    assert ev.kind == "net_accept" and ev.network.family == "ipv6" and ev.network.direction == "ingress"
    raw = layout.NET.pack(
        *hdr(layout.T_LISTEN, layout.NET.size), 2, 6, 8080, 0, v4("0.0.0.0"), v4("0.0.0.0"), 0, 3
    )
    assert run(d, raw)[0].kind == "net_listen"


def dns_query(name: str, qtype: int, flags: int = 0x0100) -> bytes:
    q = struct.pack(">HHHHHH", 1, flags, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)


def test_dns_parse() -> None:
    assert parse_dns_question(dns_query("example.com", 28)) == ("example.com", "AAAA")
    assert parse_dns_question(dns_query("a.b", 99)) == ("a.b", "TYPE99")
    assert parse_dns_question(dns_query("x.y", 1, flags=0x8180)) is None  # a response
    assert parse_dns_question(b"\0" * 11) is None
    assert parse_dns_question(dns_query("x.y", 1)[:-3]) is None  # cut short


def test_dns_record_and_garbage_is_counted() -> None:
    d, _ = decoder()
    payload = dns_query("evil.example", 16)
    addr = socket.inet_pton(socket.AF_INET, "127.0.0.53") + b"\0" * 12
    raw = layout.DNS.pack(*hdr(layout.T_DNS, layout.DNS.size + len(payload)), 2, 53, len(payload), 17, addr)
    ev, _ = run(d, raw + payload)
    assert (ev.dns.query, ev.dns.qtype, ev.dns.server_ip) == ("evil.example", "TXT", "127.0.0.53")
    # a datagram to port 53 that is not a DNS query: counted as a user-side error on its CPU
    junk = b"\x00" * 20
    raw = layout.DNS.pack(*hdr(layout.T_DNS, layout.DNS.size + 20, cpu=3), 2, 53, 20, 17, addr)
    assert run(d, raw + junk) is None
    assert d.stats.errors == 1 and d.stats.per_cpu_errors == {3: 1}


@pytest.mark.parametrize(
    ("op", "arg0", "arg1", "strings", "check"),
    [
        (1, 0, 0, (), lambda p: (p.op, p.old_uid, p.new_uid) == ("setuid", 1000, 0)),
        (10, 16, 1234, (), lambda p: (p.op, p.detail, p.target_pid) == ("ptrace", "PTRACE_ATTACH", 1234)),
        (11, 0x20000000 | 0x40000000, 0, (), lambda p: p.detail == "CLONE_NEWPID|CLONE_NEWNET"),
        (13, 0, 0, (b"/dev/sda1", b"/mnt", b"ext4"), lambda p: p.detail == "/dev/sda1 on /mnt type ext4"),
        (15, 0, 1, (b"payload",), lambda p: (p.detail, p.flags) == ("payload", 1)),
        (16, 5, 0, (), lambda p: p.detail == "BPF_PROG_LOAD"),
        (17, 0, 0, (b"debug=1",), lambda p: (p.op, p.detail) == ("init_module", "debug=1")),
        (9, 0, 0, (), lambda p: p.caps == 0 and p.detail == "effective 0x1ff -> 0x0"),
    ],
)
def test_privilege_records(op, arg0, arg1, strings, check) -> None:  # type: ignore[no-untyped-def]
    s = list(strings) + [b""] * (3 - len(strings))
    size = layout.PRIV.size + sum(map(len, s))
    old_caps, new_caps = (0x1FF, 0) if op == 9 else (0, 0)
    raw = layout.PRIV.pack(
        *hdr(layout.T_PRIV, size),
        op,
        len(s[0]),
        len(s[1]),
        len(s[2]),
        0,
        arg0,
        arg1,
        1000,
        0,
        1000,
        0,
        old_caps,
        new_caps,
    )
    ev, _ = run(decoder()[0], raw + b"".join(s))
    assert ev.kind == "privilege_change" and check(ev.privilege)


def test_cgroup_records_feed_the_index_not_the_stream() -> None:
    d, cgroups = decoder()
    path = b"/kubepods/pod1/abc"
    raw = layout.CGROUP.pack(*hdr(layout.T_CGROUP_MKDIR, layout.CGROUP.size + len(path)), 77, 0, len(path), 0)
    assert run(d, raw + path) is None
    assert cgroups == [(layout.T_CGROUP_MKDIR, 0, 77, "/kubepods/pod1/abc")]
    assert d.stats.errors == 0


def test_malformed_records_are_counted() -> None:
    d, _ = decoder()
    assert run(d, b"\x63\x00" + b"\0" * 200) is None  # unknown type
    exe = b"/bin/x"
    raw = layout.EXEC.pack(*hdr(layout.T_EXEC, 0), 0, 0, 0, 0, 5000, 0, 0, 0) + exe  # lengths past the end
    assert run(d, raw) is None
    assert d.stats.errors == 2


def test_boot_clock_offset_is_close_to_wall_clock() -> None:
    import time

    clock = BootClock()
    utc = time.clock_gettime_ns(time.CLOCK_BOOTTIME) + clock.offset
    assert abs(utc - time.time_ns()) < 1_000_000_000


def test_json_fast_path_equals_the_event_path() -> None:
    """decode_json (bytes formatted from cached fragments) gives exactly the Event that
    decode gives, for every record type on the fast path and a slow one."""
    v4 = socket.inet_pton(socket.AF_INET, "10.1.2.3") + b"\0" * 12
    weird = 'a"b\\c\x01é'.encode() + b"\xff"
    records = [
        layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size)),
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 9, 0),
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size, comm=b'q"\\\x02'), 1 << 8, 0),
        layout.NET.pack(*hdr(layout.T_CONNECT, layout.NET.size), 2, 17, 1000, 53, v4, v4, 0, 3),
        layout.NET.pack(*hdr(layout.T_LISTEN, layout.NET.size), 10, 6, 80, 0, b"\0" * 16, b"\0" * 16, 0, 3),
    ]
    for path in (b"/var/log/x.log", weird):
        records.append(
            layout.OPEN.pack(
                *hdr(layout.T_OPEN, layout.OPEN.size + len(path)), 0o2, 0o100600, 4, len(path), 1, 0, 1, 2, 3
            )
            + path
        )
    exe = b"/bin/ls"
    records.append(
        layout.EXEC.pack(*hdr(layout.T_EXEC, layout.EXEC.size + len(exe)), 0, 0, 0, 0, len(exe), 0, 0, 0)
        + exe
    )
    fast, _ = decoder()
    slow, _ = decoder()
    for raw in records * 2:  # the second round hits the fragment cache
        value, key, ts_ms, cpu = fast.decode_json(memoryview(raw), 0, len(raw))
        ev, key2 = slow.decode(memoryview(raw), 0, len(raw))
        assert decode_event(value) == ev
        assert key == key2 and ts_ms == ev.time // 1_000_000 and cpu == 1


def test_fragment_cache_follows_the_attribution() -> None:
    """A container first unknown, then resolved: the cached JSON must not keep the old answer."""
    answers = [(Workload(cluster="c", container_id="ab" * 32), b"k1", 5.0), (WL, KEY, None)]
    now = [0.0]
    d = Decoder(
        NODE, FixedClock(0), lambda cg, v1: answers[0] if now[0] < 5 else answers[1], monotonic=lambda: now[0]
    )
    raw = layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size))
    first = decode_event(d.decode_json(memoryview(raw), 0, len(raw))[0])
    assert first.workload.pod == ""
    now[0] = 6.0
    second = decode_event(d.decode_json(memoryview(raw), 0, len(raw))[0])
    assert second.workload == WL
