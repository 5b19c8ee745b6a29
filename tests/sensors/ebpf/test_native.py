"""The native ring consumer (cadrring.c) against the Python path it replaces.

Every record the C side formats must give exactly the bytes ``Decoder.decode_json`` gives
(and the same key, timestamp and cpu): on hand-made records of every kind, on random
strings (ill-formed UTF-8, control characters, quotes), and on records captured from the
kernel. The ring walk itself (positions, BUSY/DISCARD bits, alignment, wrap-around, the
consumer position it releases, handing rare records to Python in order) is checked on a
ring laid out in a memfd exactly as the kernel maps one.
"""

from __future__ import annotations

import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.codec import decode_event
from schemas.records import Workload
from sensors.ebpf import layout
from sensors.ebpf.decode import BootClock, Decoder
from sensors.ebpf.native import NativeConsumer, NativeFormatter, load_library

NODE = "node-a"
WL = Workload(cluster="c", namespace="shop", pod="web-1", container_id="ab" * 32, labels={"a": 'x"y'})
KEY = b"c/shop/Pod/web-1"


class FixedClock(BootClock):
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def calibrate(self) -> int:
        return self.offset


@pytest.fixture(scope="module")
def lib():  # type: ignore[no-untyped-def]
    from sensors.ebpf.loader import BUILD_SCRIPT

    found = load_library()
    if found is None:
        subprocess.run([str(BUILD_SCRIPT)], capture_output=True, check=False)
        from sensors.ebpf import native

        native._LIBS.clear()
        found = load_library()
    if found is None:
        pytest.skip("libcadrring.so could not be built here (no C compiler?)")
    return found


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


def make_decoder(
    node: str = NODE, workload: Workload = WL, offset: int = 1_700_000_000_000_000_000
) -> Decoder:
    cgroups: list = []
    return Decoder(
        node, FixedClock(offset), lambda cg, v1: (workload, KEY, None), on_cgroup=lambda *a: cgroups.append(a)
    )


def assert_same(lib, records: list[bytes], **kw: object) -> None:  # type: ignore[no-untyped-def]
    """Both paths, record by record: identical lines, keys, timestamps, cpus, counters."""
    py = make_decoder(**kw)  # type: ignore[arg-type]
    c = make_decoder(**kw)  # type: ignore[arg-type]
    fmt = NativeFormatter(lib, c)
    try:
        for raw in records:
            want = py.decode_json(memoryview(raw), 0, len(raw))
            got = fmt.format_one(raw)
            if want is None:
                assert len(got) == 0 and got.data == b""
                continue
            assert got.data == want[0] + b"\n", raw
            assert got.items() == [want]
            decode_event(want[0])  # and it is a valid event
        assert (c.stats.records, c.stats.events, c.stats.errors) == (
            py.stats.records,
            py.stats.events,
            py.stats.errors,
        )
    finally:
        fmt.close()


V4 = socket.inet_pton(socket.AF_INET, "10.1.2.3") + b"\0" * 12
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")


def open_rec(path: bytes, flags: int = 0o2, **kw: object) -> bytes:
    return (
        layout.OPEN.pack(
            *hdr(layout.T_OPEN, layout.OPEN.size + len(path), **kw),
            flags,
            0o100600,
            4,
            len(path),
            1,
            0,
            1,
            2,
            3,
        )
        + path
    )


def exec_rec(exe: bytes, cwd: bytes, args: bytes, flags: int = 0, fname: bytes = b"", **kw: object) -> bytes:
    size = layout.EXEC.size + len(exe) + len(cwd) + len(args) + len(fname)
    return (
        layout.EXEC.pack(
            *hdr(layout.T_EXEC, size, **kw), 0, 1000, 1001, flags, len(exe), len(cwd), len(args), len(fname)
        )
        + exe
        + cwd
        + args
        + fname
    )


def net_rec(rtype: int, family: int, proto: int, src: bytes, dst: bytes, **kw: object) -> bytes:
    return layout.NET.pack(*hdr(rtype, layout.NET.size, **kw), family, proto, 40000, 443, src, dst, 0, 5)


def dns_rec(name: str) -> bytes:
    q = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    return layout.DNS.pack(*hdr(layout.T_DNS, layout.DNS.size + len(q)), 2, 53, len(q), 17, V4) + q


def test_every_hot_kind_is_byte_identical(lib) -> None:  # type: ignore[no-untyped-def]
    records = [
        layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size)),
        layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size, ppid=0, pid=0, tid=0, comm=b"\0")),
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 9, 0),
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 3 << 8, 0),
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size, comm=b'q"\\\x02\xe2\x82'), -1, 0),
        net_rec(layout.T_CONNECT, 2, 6, V4, V4),
        net_rec(layout.T_ACCEPT, 10, 6, V6, V6),
        net_rec(layout.T_LISTEN, 10, 132, b"\0" * 16, b"\0" * 16),  # SCTP: the number
        net_rec(layout.T_CONNECT, 2, 17, V4, V4, cpu=0xABC, seq=2**63, ktime=2**40),
        open_rec(b"/var/log/x.log"),
        open_rec(b"/etc/passwd", flags=0),  # a read
        open_rec('a"b\\c\x01\x1f\x7fé'.encode() + b"\xff\xed\xa0\x80"),
        open_rec(b""),
        exec_rec(b"/usr/bin/curl", b"/tmp", b"curl\0-s\0http://x\0", 0x3, b"/usr/bin/curl"),
        exec_rec(b"/memfd:x", b"", b"a\xff\0\0", layout.EXEC_EXE_DELETED | layout.EXEC_STDOUT_SOCK),
        exec_rec(b"", b"", b"", layout.EXEC_EXE_DELETED),
        exec_rec(b"/bin/sh", b"/", b'sh\0-c\0echo "$0"\t\\\0\0', layout.EXEC_TTY, uid=0, ppid=0),
        exec_rec(b"/bin/x", b"/", b"\0", 0),
        exec_rec(b"/bin/x", b"/", b"".join(b"a%d\0" % i for i in range(1100)), 0),  # argv past 1024
    ]
    assert_same(lib, records)
    assert_same(lib, records, node="", workload=Workload())  # no node, host workload
    assert_same(lib, records, node='n"\\ö\x01', offset=-5)  # escapes in the node


def test_rare_kinds_and_malformed_records_take_the_python_path(lib) -> None:  # type: ignore[no-untyped-def]
    path = b"/kubepods/pod1/abc"
    records = [
        dns_rec("evil.example"),
        layout.PRIV.pack(*hdr(layout.T_PRIV, layout.PRIV.size), 1, 0, 0, 0, 0, 0, 0, 1000, 0, 1000, 0, 0, 0),
        layout.CGROUP.pack(*hdr(layout.T_CGROUP_MKDIR, layout.CGROUP.size + len(path)), 77, 0, len(path), 0)
        + path,
        open_rec(b"/etc/passwd")[:-3],  # path_len runs past the record
        exec_rec(b"/bin/ls", b"/", b"ls\0")[:-2],
        b"\x63\x00" + b"\0" * 200,  # unknown type
        layout.EXIT.pack(*hdr(layout.T_EXIT, layout.EXIT.size), 0, 0)[:100],  # fixed part cut
    ]
    assert_same(lib, records)


def test_random_strings_are_byte_identical(lib) -> None:  # type: ignore[no-untyped-def]
    """Paths, comms and argv of random bytes biased to the hard cases."""
    rng = random.Random(1234)
    # ASCII, escapes, well-formed multi-byte, and ill-formed starts, tails and truncations
    alphabet = b'a / " \\ \x00 \x01 \x1f \x7f \n \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80'.split(b" ")
    alphabet += b"\x80 \xbf \xc0 \xc2 \xe0 \xe0\xa0 \xed\xa0 \xef\xbf \xf0\x90 \xf4\x90 \xf5 \xff".split(b" ")

    def junk(n: int) -> bytes:
        return b"".join(rng.choice(alphabet) for _ in range(n))

    records = []
    for _ in range(400):
        comm = junk(rng.randint(0, 8))[:15].ljust(16, b"\0")
        records.append(open_rec(junk(rng.randint(0, 40)).replace(b"\0", b""), comm=comm))
        args = b"\0".join(junk(rng.randint(0, 6)) for _ in range(rng.randint(0, 4)))
        records.append(
            exec_rec(junk(rng.randint(0, 10)), junk(rng.randint(0, 10)), args, rng.randint(0, 127), comm=comm)
        )
    assert_same(lib, records)


def test_workload_answers_expire_and_follow_the_attribution(lib) -> None:  # type: ignore[no-untyped-def]
    """A container first unknown (answer expires), then named; a changed attribution
    (generation) drops every cached fragment."""
    unknown = (Workload(cluster="c", container_id="ab" * 32), b"k1", 5.0)
    named = (WL, KEY, None)
    now, gen, answer = [0.0], [0], [unknown]
    d = Decoder(NODE, FixedClock(0), lambda cg, v1: answer[0] if now[0] < 5 else named)
    fmt = NativeFormatter(lib, d, generation=lambda: gen[0], monotonic=lambda: now[0])
    raw = layout.FORK.pack(*hdr(layout.T_FORK, layout.FORK.size))
    first = decode_event(fmt.format_one(raw).items()[0][0])
    assert first.workload.pod == "" and fmt.format_one(raw).items()[0][1] == b"k1"
    now[0] = 6.0
    second = fmt.format_one(raw).items()[0]
    assert decode_event(second[0]).workload == WL and second[1] == KEY
    named = (Workload(cluster="c", pod="moved"), b"k2", None)
    assert decode_event(fmt.format_one(raw).items()[0][0]).workload == WL  # cached until ...
    gen[0] += 1  # ... the attribution changes
    assert decode_event(fmt.format_one(raw).items()[0][0]).workload.pod == "moved"
    fmt.close()


def test_cached_process_blocks_follow_thread_and_clock(lib) -> None:  # type: ignore[no-untyped-def]
    """Both sides cache per-process JSON: a second thread of a process (only the tid
    differs) and a recalibrated boot clock must not reuse a stale block."""
    py, c = make_decoder(), make_decoder()
    fmt = NativeFormatter(lib, c)
    try:
        for tid, offset in ((101, 10**18), (102, 10**18), (101, 10**18), (101, 10**18 + 5)):
            py.clock.offset = c.clock.offset = offset
            raw = open_rec(b"/tmp/t", tid=tid)
            want = py.decode_json(memoryview(raw), 0, len(raw))
            got = fmt.format_one(raw).items()[0]
            assert got == want
            ev = decode_event(got[0])
            assert ev.process.tid == tid and ev.process.start_time == 900 + offset
    finally:
        fmt.close()


# -- the ring walk, on a ring laid out as the kernel maps it ------------------------------

PAGE = mmap.PAGESIZE
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    """A memfd holding [consumer page][producer page][data][data again]: the layout
    libbpf and cadrring.c map (the kernel maps the data pages twice so a record that
    wraps is contiguous; here the second copy is written by hand)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("cadr-fake-ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.ring = bytearray(size)
        self.prod = 0
        self.mm = mmap.mmap(self.fd, PAGE + 2 * size, offset=PAGE)  # the producer mapping
        self.cons_mm = mmap.mmap(self.fd, PAGE, offset=0)

    @property
    def cons(self) -> int:
        return struct.unpack_from("<Q", self.cons_mm, 0)[0]

    def add(self, record: bytes, flags: int = 0) -> int:
        """Append a record (header + payload, 8-aligned, wrapping); returns its position."""
        pos = self.prod
        blob = struct.pack("<II", len(record) | flags, 0) + record
        blob += b"\0" * (-len(blob) % 8)
        for i, b in enumerate(blob):
            self.ring[(pos + i) % self.size] = b
        self.prod += len(blob)
        return pos

    def set_flags(self, pos: int, flags: int) -> None:
        off = pos % self.size
        length = struct.unpack_from("<I", self.ring, off)[0] & ~(BUSY | DISCARD)
        struct.pack_into("<I", self.ring, off, length | flags)

    def publish(self) -> None:
        self.mm[PAGE : PAGE + self.size] = self.ring
        self.mm[PAGE + self.size : PAGE + 2 * self.size] = self.ring
        struct.pack_into("<Q", self.mm, 0, self.prod)

    def close(self) -> None:
        self.mm.close()
        self.cons_mm.close()
        os.close(self.fd)


@pytest.fixture
def fake_ring() -> Iterator[FakeRing]:
    ring = FakeRing(4 * PAGE)
    yield ring
    ring.close()


ROUNDS = 6


def test_ring_walk_order_wrap_busy_discard(lib, fake_ring: FakeRing) -> None:  # type: ignore[no-untyped-def]
    cgroups: list = []
    dec = Decoder(NODE, FixedClock(0), lambda cg, v1: (WL, KEY, None), on_cgroup=lambda *a: cgroups.append(a))
    ref = make_decoder(offset=0)
    view = memoryview(fake_ring.mm)
    consumer = NativeConsumer(lib, dec, view, fake_ring.fd, fake_ring.size)
    try:
        cg_path = b"/kubepods/podx"
        stream = []
        seq = 0
        # enough records to wrap the 16 KiB ring twice, with rare kinds in between
        for round_ in range(ROUNDS):
            batch_records = []
            for i in range(40):
                seq += 1
                if i % 13 == 5:
                    rec = dns_rec(f"q{seq}.example")
                elif i % 17 == 3:
                    rec = (
                        layout.CGROUP.pack(
                            *hdr(layout.T_CGROUP_MKDIR, layout.CGROUP.size + len(cg_path), seq=seq),
                            seq,
                            0,
                            len(cg_path),
                            0,
                        )
                        + cg_path
                    )
                elif i % 3 == 0:
                    rec = exec_rec(b"/bin/x%d" % seq, b"/", b"x\0%d\0" % seq, seq=seq)
                else:
                    rec = open_rec(b"/tmp/f%d" % seq, seq=seq, cgroup=42 + seq % 3)
                flags = DISCARD if i == 7 else 0
                fake_ring.add(rec, flags)
                batch_records.append((rec, flags))
            # the last one still being written: the walk must stop before it
            busy_rec = open_rec(b"/tmp/busy%d" % round_, seq=10_000 + round_)
            busy_pos = fake_ring.add(busy_rec, BUSY)
            fake_ring.publish()
            batch, _, more = consumer.drain(1 << 20)
            assert not more
            want = []
            for rec, flags in batch_records:
                if flags & DISCARD:
                    continue
                item = ref.decode_json(memoryview(rec), 0, len(rec))
                if item is not None:
                    want.append(item)
            assert batch.items() == want
            assert batch.data == b"".join(v + b"\n" for v, *_ in want)
            assert fake_ring.cons == busy_pos  # released up to the busy record, no further
            stream.extend(want)
            fake_ring.set_flags(busy_pos, 0)
            fake_ring.publish()
            batch, _, _ = consumer.drain(1 << 20)
            assert [v for v, *_ in batch.items()] == [
                ref.decode_json(memoryview(busy_rec), 0, len(busy_rec))[0]
            ]
            assert fake_ring.cons == fake_ring.prod
        assert fake_ring.prod > 2 * fake_ring.size  # it did wrap
        assert len(cgroups) == ROUNDS * 3  # the cgroup records reached Python, once each
        assert dec.stats.errors == 0
    finally:
        consumer.close()


def test_ring_walk_budget_and_full_output(lib, fake_ring: FakeRing) -> None:  # type: ignore[no-untyped-def]
    dec = make_decoder(offset=0)
    ref = make_decoder(offset=0)
    records = [open_rec(b"/tmp/budget%d" % i, seq=i) for i in range(60)]
    for rec in records:
        fake_ring.add(rec)
    fake_ring.publish()
    # a budget of ~10 records per call, then an output buffer that holds ~10 lines
    consumer = NativeConsumer(lib, dec, memoryview(fake_ring.mm), fake_ring.fd, fake_ring.size)
    small = NativeConsumer(
        lib, make_decoder(offset=0), memoryview(fake_ring.mm), fake_ring.fd, fake_ring.size, out_bytes=8 << 10
    )
    try:
        got = []
        step = (len(records[0]) + 8 + 7) & ~7  # header, 8-byte alignment
        batch, consumed, more = consumer.drain(2000)
        assert more and 2000 <= consumed < 2000 + step and len(batch) == consumed // step
        got += batch.items()
        while True:
            batch, consumed, more = small.drain(1 << 20)
            got += batch.items()
            if not more:
                break
        assert got == [ref.decode_json(memoryview(r), 0, len(r)) for r in records]
        assert fake_ring.cons == fake_ring.prod
    finally:
        small.close()
        consumer.close()


# -- records captured from the kernel -----------------------------------------------------

WORKLOAD = textwrap.dedent(
    r"""
    import os, socket, subprocess, sys
    work = sys.argv[1]
    for name in ("plain.log", "sp ace\"q\\.log", "caf\u00e9.log"):
        with open(os.path.join(work, name), "w") as fh:
            fh.write("x")
    os.close(os.open(os.path.join(work, "raw").encode() + b"\xff\xfe", os.O_WRONLY | os.O_CREAT, 0o600))
    subprocess.run(["/bin/sh", "-c", "echo $0 $1 >/dev/null", "arg one", "t\u00e9\tst"], check=True)
    subprocess.run([b"/bin/true", b"bad\xffarg", b""], check=True)
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    cli = socket.create_connection(("127.0.0.1", srv.getsockname()[1])); conn, _ = srv.accept()
    conn.close(); cli.close(); srv.close()
    s6 = socket.socket(socket.AF_INET6); s6.bind(("::1", 0)); s6.listen(1)
    c6 = socket.create_connection(("::1", s6.getsockname()[1])); c6.close(); s6.close()
    """
)


@pytest.mark.ebpf
def test_records_captured_from_the_kernel_are_byte_identical(lib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sensors.ebpf.loader import Probe, ProbeConfig

    tmp_path.chmod(0o755)
    probe = Probe(ProbeConfig())
    try:
        captured: list[bytes] = []

        def grab(data: memoryview, off: int, length: int) -> None:
            captured.append(bytes(data[off : off + length]))

        while probe.ring.drain(grab, 1 << 24)[2]:  # start from an empty ring
            pass
        captured.clear()
        subprocess.run([sys.executable, "-c", WORKLOAD, str(tmp_path)], check=True, timeout=60)
        kinds: set[int] = set()
        deadline = time.monotonic() + 20
        need = {layout.T_OPEN, layout.T_EXEC, layout.T_FORK, layout.T_EXIT, layout.T_CONNECT, layout.T_ACCEPT}
        while not need <= kinds and time.monotonic() < deadline:
            probe.ring.drain(grab, 1 << 24)
            kinds = {int.from_bytes(r[:2], "little") for r in captured}
            time.sleep(0.05)
        assert need <= kinds, f"kinds seen: {sorted(kinds)}"
        assert any(b"\xff\xfe" in r for r in captured)  # the ill-formed path made it
        assert_same(lib, captured)
    finally:
        probe.close()


@pytest.mark.ebpf
def test_live_sensor_streams_through_the_native_consumer(
    lib, live_sensor, make_container, workdir: Path
) -> None:  # type: ignore[no-untyped-def]
    """The module's live sensor (a JSON sink) reads the ring with the C consumer, and a
    container's events come out attributed to its workload."""
    assert live_sensor.sensor.native is not None
    ctr = make_container("native")
    target = workdir / "native.txt"
    ctr.run(["/bin/sh", "-c", f"echo cadr-native > {target}"])
    [ev] = live_sensor.wait_for(lambda ev: ev.kind == "file_open" and ev.file.path == str(target))
    assert ev.workload.pod == ctr.workload.pod and ev.process.comm == "sh"
    health = live_sensor.wait_for(lambda ev: ev.kind == "sensor_health", count=2)
    assert health[-1].health.detail["consumer"] == "native"


@pytest.mark.ebpf
def test_a_backlog_past_wakeup_bytes_wakes_the_consumer(tmp_path: Path) -> None:
    """Records go in without a wake-up; the one that takes the backlog across
    wakeup_bytes forces one, so a sleeping consumer is woken by a burst (not only by its
    timer). The ring's epoll is edge-triggered: readable only after a forced wake-up."""
    from sensors.ebpf.loader import Probe, ProbeConfig

    tmp_path.chmod(0o755)
    probe = Probe(ProbeConfig(wakeup_bytes=64 << 10, ring_bytes=4 << 20))
    try:
        while probe.ring.drain(lambda *a: None, 1 << 24)[2]:
            pass
        probe.ring.clear_wakeup()
        target = tmp_path / "burst"
        target.write_text("")
        # ~2000 write-opens: ~350 KB of records, several times the threshold
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import os\nfor _ in range(2000): os.close(os.open({str(target)!r}, os.O_WRONLY))",
            ],
            check=True,
            timeout=60,
        )
        assert probe.ring.epoll.poll(10), "no forced wake-up although the backlog passed wakeup_bytes"
    finally:
        probe.close()
