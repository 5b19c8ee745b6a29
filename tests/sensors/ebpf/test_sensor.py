"""The eBPF sensor against the real kernel (root, BTF): real processes in a test container.

One scenario runs inside a container (cgroup + mount/pid/net/uts namespaces): a shell
with arguments, a file written then executed, a TCP connect to a loopback listener, DNS
queries to a loopback resolver (Python's sendto and glibc's resolver), a setuid, a
ptrace attach. Each must arrive as the right event kind with the right fields and the
container's workload; a host process running at the same time must not be attributed
to the container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from schemas.codec import decode_event
from schemas.records import Event
from sensors.publisher import encode_event

pytestmark = pytest.mark.ebpf

SCENARIO = textwrap.dedent(
    r"""
    import ctypes, json, os, socket, struct, subprocess, sys, threading

    work = sys.argv[1]
    out = {"pid": os.getpid()}

    # a loopback DNS resolver answering NXDOMAIN (so glibc does not wait)
    res = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    res.bind(("127.0.0.1", 53))
    def serve():
        while True:
            data, peer = res.recvfrom(2048)
            if data == b"stop":
                return
            reply = data[:2] + b"\x81\x83" + data[4:6] + b"\x00\x00\x00\x00\x00\x00" + data[12:]
            res.sendto(reply, peer)
    resolver = threading.Thread(target=serve, daemon=True)
    resolver.start()

    # 1. a shell with arguments
    subprocess.run(["/bin/sh", "-c", "echo ran $0 $1", "cadr-arg-one", "cadr arg two"], check=True)

    # 2. a file written, then executed
    payload = os.path.join(work, "payload")
    subprocess.run(["cp", "/bin/true", payload], check=True)
    os.chmod(payload, 0o755)
    subprocess.run([payload, "drift"], check=True)

    # 3. outbound TCP connect to a loopback listener (and its accept)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
    conn, _ = srv.accept()
    out["tcp"] = [srv.getsockname()[1], cli.getsockname()[1]]
    conn.close(); cli.close(); srv.close()

    # 4. DNS: a hand-built query (sendto, musl-style) ...
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in "cadr-sendto.example".split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 16, 1)  # TXT
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(q, ("127.0.0.1", 53))
    c.settimeout(5)
    c.recvfrom(512)
    # ... and glibc's resolver (connect + sendmmsg) through a private resolv.conf
    with open(os.path.join(work, "resolv.conf"), "w") as fh:
        fh.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", os.path.join(work, "resolv.conf"), "/etc/resolv.conf"], check=True)
    subprocess.run(["getent", "ahosts", "cadr-glibc.example"], check=False)

    # 5. setuid in a child
    pid = os.fork()
    if pid == 0:
        os.setuid(65534)
        os._exit(0)
    os.waitpid(pid, 0)
    out["setuid_child"] = pid

    # 6. ptrace attach to a child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    child = subprocess.Popen(["sleep", "30"])
    rc = libc.ptrace(16, child.pid, None, None)  # PTRACE_ATTACH
    out["ptrace"] = [child.pid, rc]
    os.waitpid(child.pid, 0)
    libc.ptrace(17, child.pid, None, None)  # PTRACE_DETACH
    child.kill(); child.wait()

    res.sendto(b"stop", res.getsockname())
    print(json.dumps(out))
    """
)


def _in(container, ev: Event) -> bool:  # type: ignore[no-untyped-def]
    return ev.process is not None and ev.process.cgroup_id == container.cgroup_id


def test_container_scenario(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    ctr = make_container("web")
    script = workdir / "scenario.py"
    script.write_text(SCENARIO)
    host_file = workdir / "host-write"
    host = subprocess.Popen(["sh", "-c", f"echo host > {host_file}; cat /etc/hostname > /dev/null"])
    stdout = ctr.run(
        ["sh", "-c", 'ip link set lo up && exec /usr/bin/python3 "$0" "$1"', str(script), str(workdir)]
    )
    host.wait(10)
    info = json.loads(stdout.strip().splitlines()[-1])
    in_ctr = lambda ev: _in(ctr, ev)  # noqa: E731

    # every event of the container names its workload and container id
    def ctr_event(pred):  # type: ignore[no-untyped-def]
        return lambda ev: in_ctr(ev) and pred(ev)

    # 1. exec of a shell with arguments
    [shell] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "process_exec" and "cadr-arg-one" in ev.process.args)
    )
    assert shell.process.exe in ("/usr/bin/dash", "/bin/dash", "/usr/bin/sh", "/bin/sh")
    assert shell.process.args == ["/bin/sh", "-c", "echo ran $0 $1", "cadr-arg-one", "cadr arg two"]
    assert shell.process.cwd == os.getcwd()  # the container inherits the test process's directory
    assert shell.process.uid == 0 and shell.process.euid == 0
    assert shell.process.comm == "sh"
    assert shell.workload.container_id == ctr.container_id
    assert shell.workload.pod == ctr.workload.pod and shell.workload.namespace == "shop"
    assert shell.workload.workload_kind == "Deployment" and shell.workload.workload_name == "web"
    assert shell.process.cgroup_id == ctr.cgroup_id
    # the container's own namespaces, not the host's
    assert shell.process.pid_ns != os.stat("/proc/self/ns/pid").st_ino
    assert shell.process.mnt_ns != os.stat("/proc/self/ns/mnt").st_ino
    # parent is the scenario's python, whose exec we also saw
    [py] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "process_exec" and ev.process.exe.startswith("/usr/bin/python3"))
    )
    assert shell.process.parent_exec_id == py.process.exec_id
    assert py.process.args[-1] == str(workdir)
    # fork and exit of the shell share its exec_id
    live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "process_fork" and ev.process.exec_id == shell.process.exec_id)
    )
    [ex] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "process_exit" and ev.process.exec_id == shell.process.exec_id)
    )
    assert ex.process.exit_code == 0

    # 2. a file written, then executed
    payload = str(workdir / "payload")
    [wrote] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "file_open" and ev.file.path == payload and ev.file.write)
    )
    assert wrote.process.comm == "cp"
    [ran] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "process_exec" and ev.process.exe == payload)
    )
    assert ran.process.args == [payload, "drift"]
    assert ran.time >= wrote.time

    # 3. TCP connect to the loopback listener, and its accept
    port, client_port = info["tcp"]
    [conn] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "net_connect" and ev.network.dst_port == port)
    )
    net = conn.network
    assert (net.protocol, net.family, net.dst_ip, net.src_ip) == ("tcp", "ipv4", "127.0.0.1", "127.0.0.1")
    assert net.src_port == client_port and net.direction == "egress"
    [acc] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "net_accept" and ev.network.src_port == port)
    )
    assert acc.network.dst_port == client_port and acc.network.direction == "ingress"
    live_sensor.wait_for(ctr_event(lambda ev: ev.kind == "net_listen" and ev.network.src_port == port))

    # 4. DNS queries to the loopback resolver
    [txt] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "dns_query" and ev.dns.query == "cadr-sendto.example")
    )
    assert txt.dns.qtype == "TXT" and txt.dns.server_ip == "127.0.0.1"
    glibc = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "dns_query" and ev.dns.query == "cadr-glibc.example"), count=2
    )
    assert {ev.dns.qtype for ev in glibc} >= {"A", "AAAA"}
    assert all(ev.process.comm == "getent" for ev in glibc)
    # the bind mount of resolv.conf is a privilege event too
    [mnt] = live_sensor.wait_for(
        ctr_event(
            lambda ev: (
                ev.kind == "privilege_change"
                and ev.privilege.op == "mount"
                and "on /etc/resolv.conf" in ev.privilege.detail
            )
        )
    )
    assert mnt.privilege.detail.startswith(str(workdir / "resolv.conf")) and mnt.privilege.result == 0
    # unshare --mount-proc mounted /proc in the container too
    live_sensor.wait_for(
        ctr_event(
            lambda ev: ev.kind == "privilege_change" and ev.privilege.detail.startswith("proc on /proc")
        )
    )

    # 5. setuid
    [su] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "privilege_change" and ev.privilege.op == "setuid")
    )
    assert (su.privilege.old_uid, su.privilege.new_uid, su.privilege.result) == (0, 65534, 0)

    # 6. ptrace (target pid as the tracer saw it: in the container's pid namespace)
    target, rc = info["ptrace"]
    assert rc == 0
    [pt] = live_sensor.wait_for(
        ctr_event(lambda ev: ev.kind == "privilege_change" and ev.privilege.op == "ptrace")
    )
    assert pt.privilege.detail == "PTRACE_ATTACH" and pt.privilege.target_pid == target
    assert pt.privilege.result == 0

    # the host process beside it: host workload, not the container
    [hw] = live_sensor.wait_for(lambda ev: ev.kind == "file_open" and ev.file.path == str(host_file))
    assert hw.workload.is_host and hw.workload.container_id == "" and not _in(ctr, hw)
    # and nothing of the container was attributed to the host or another container
    for ev in live_sensor.events:
        if _in(ctr, ev):
            assert ev.workload.container_id == ctr.container_id, ev

    # every event survives the wire contract
    for ev in [shell, wrote, ran, conn, acc, txt, su, pt, hw]:
        assert decode_event(encode_event(ev)) == ev


def test_events_before_the_pod_is_known_get_its_workload(  # type: ignore[no-untyped-def]
    live_sensor, make_container, resolver
) -> None:
    """A container's first processes run before the pod watch knows the container: their events wait
    for the pod (sensors.ebpf.hold) and leave with its workload, not with the container id alone."""
    late = make_container("late", register=False)
    late.run(["/usr/bin/cat", "/etc/hostname"])
    # the pod reaches the watch only after the sensor decoded the container's events and asked
    deadline = time.monotonic() + 20
    while late.container_id not in resolver.asked:
        assert time.monotonic() < deadline, "the sensor never asked about the container"
        time.sleep(0.05)
    resolver.add(f"containerd://{late.container_id}", late.workload)
    (ev,) = live_sensor.wait_for(
        lambda ev: _in(late, ev) and ev.kind == "process_exec" and ev.process.exe == "/usr/bin/cat",
        timeout=30,
    )
    assert (ev.workload.pod, ev.workload.namespace, ev.workload.workload_name) == (
        late.workload.pod,
        "shop",
        "late",
    ), ev.workload
    assert ev.workload.container_id == late.container_id
    opens = [
        e
        for e in live_sensor.events
        if _in(late, e) and e.kind == "file_open" and e.file.path == "/etc/hostname"
    ]
    assert opens and all(e.workload.pod == late.workload.pod for e in opens)
    assert live_sensor.sensor.counters()["attribution"]["attributed_late"] >= 2

    # a container whose pod never comes: after the hold its events leave with the id alone, counted
    before = live_sensor.sensor.counters()["attribution"]["unattributed"]
    never = make_container("never", register=False)
    never.run(["/usr/bin/true"])
    (orphan,) = live_sensor.wait_for(
        lambda ev: _in(never, ev) and ev.kind == "process_exec" and ev.process.exe == "/usr/bin/true",
        timeout=40,
    )
    assert orphan.workload.pod == "" and orphan.workload.container_id == never.container_id
    assert live_sensor.sensor.counters()["attribution"]["unattributed"] > before


def test_exec_tty_and_stdio_socket(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """A reverse shell's tell: stdin/stdout are a socket; a terminal gives tty."""
    ctr = make_container("rev")
    script = workdir / "rev.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, socket, subprocess
            a, b = socket.socketpair()
            subprocess.run(["/bin/sh", "-c", "echo cadr-stdio-socket"], stdin=b, stdout=b, check=True)
            subprocess.run(["/bin/sh", "-c", "echo cadr-plain"], check=True)
            """
        )
    )
    ctr.run(["/usr/bin/python3", str(script)], namespaces=False)
    [sock] = live_sensor.wait_for(
        lambda ev: _in(ctr, ev) and ev.kind == "process_exec" and "echo cadr-stdio-socket" in ev.process.args
    )
    assert sock.process.stdio_socket is True
    [plain] = live_sensor.wait_for(
        lambda ev: _in(ctr, ev) and ev.kind == "process_exec" and "echo cadr-plain" in ev.process.args
    )
    assert plain.process.stdio_socket is False
    # a pseudo-terminal: `script` gives its child a controlling tty
    if subprocess.run(["which", "script"], capture_output=True).returncode == 0:
        ctr.run(["script", "-qec", "/bin/sh -c 'echo cadr-tty'", "/dev/null"], namespaces=False)
        [tty] = live_sensor.wait_for(
            lambda ev: _in(ctr, ev) and ev.kind == "process_exec" and "echo cadr-tty" in ev.process.args
        )
        assert tty.process.tty is True
    assert plain.process.tty is False


def test_file_open_filtering(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """Reads are reported once per container per file; sensitive ones once per process;
    writes always; directories and /proc reads never."""
    ctr = make_container("files")
    data = workdir / "data.txt"
    data.write_text("x")
    shadow_like = "/etc/shadow"
    ctr.run(
        [
            "sh",
            "-c",
            f"for i in 1 2 3 4 5; do cat {data} >/dev/null; done; "
            f"cat {shadow_like} >/dev/null; cat {shadow_like} >/dev/null; "
            f"for i in 1 2 3; do echo $i >> {workdir}/log.txt; done; "
            f"ls {workdir} >/dev/null; cat /proc/self/status >/dev/null; echo cadr-files-done",
        ],
        namespaces=False,
    )
    live_sensor.wait_for(lambda ev: _in(ctr, ev) and ev.kind == "process_exit" and ev.process.comm == "sh")
    opens = [ev for ev in live_sensor.events if _in(ctr, ev) and ev.kind == "file_open"]
    reads = [ev for ev in opens if ev.file.path == str(data)]
    assert len(reads) == 1, "first read per container only"
    assert len([ev for ev in opens if ev.file.path == shadow_like]) == 2, "sensitive: once per process"
    assert len([ev for ev in opens if ev.file.path == f"{workdir}/log.txt" and ev.file.write]) == 3
    assert not [ev for ev in opens if ev.file.path.startswith("/proc/")]
    assert not [ev for ev in opens if ev.file.path == str(workdir)]


def test_privilege_ops(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """unshare, setns, memfd_create, capset, setgid, bpf() each arrive as privilege_change."""
    ctr = make_container("priv")
    script = workdir / "priv.py"
    script.write_text(
        textwrap.dedent(
            """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            CLONE_NEWUTS = 0x04000000
            fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
            assert libc.unshare(CLONE_NEWUTS) == 0
            assert libc.setns(fd, CLONE_NEWUTS) == 0  # and back
            m = os.memfd_create("cadr-memfd", 0)
            pid = os.fork()
            if pid == 0:
                os.setgid(65534)
                os._exit(0)
            os.waitpid(pid, 0)
            # capset: drop every capability in a child
            pid = os.fork()
            if pid == 0:
                class Hdr(ctypes.Structure):
                    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
                class Data(ctypes.Structure):
                    _fields_ = [("e", ctypes.c_uint32), ("p", ctypes.c_uint32), ("i", ctypes.c_uint32)]
                data = (Data * 2)()
                libc.capset(ctypes.byref(Hdr(0x20080522, 0)), data)
                os._exit(0)
            os.waitpid(pid, 0)
            # bpf(BPF_PROG_LOAD) with an empty attr: refused, but the attempt is the event
            libc.syscall(321, 5, ctypes.create_string_buffer(128), 128)
            print("ok")
            """
        )
    )
    ctr.run(["/usr/bin/python3", str(script)], namespaces=False)

    def priv(op: str) -> Event:
        return live_sensor.wait_for(
            lambda ev: _in(ctr, ev) and ev.kind == "privilege_change" and ev.privilege.op == op
        )[0]

    assert "CLONE_NEWUTS" in priv("unshare").privilege.detail
    assert priv("setns").privilege.detail == "CLONE_NEWUTS"
    memfd = priv("memfd_create")
    assert memfd.privilege.detail == "cadr-memfd" and memfd.privilege.result >= 0
    sg = priv("setgid")
    assert (sg.privilege.old_gid, sg.privilege.new_gid) == (0, 65534)
    cap = priv("capset")
    assert cap.privilege.caps == 0 and cap.privilege.result == 0
    bpf = priv("bpf")
    assert bpf.privilege.detail == "BPF_PROG_LOAD" and bpf.privilege.result < 0


def test_fileless_exec_from_memfd(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    ctr = make_container("memfd")
    script = workdir / "memfd.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            fd = os.memfd_create("cadr-fileless", 0)
            os.write(fd, open("/bin/true", "rb").read())
            pid = os.fork()
            if pid == 0:
                os.execve(fd, ["cadr-fileless", "x"], {})
            os.waitpid(pid, 0)
            """
        )
    )
    ctr.run(["/usr/bin/python3", str(script)], namespaces=False)
    [ev] = live_sensor.wait_for(
        lambda ev: _in(ctr, ev) and ev.kind == "process_exec" and ev.process.args[:1] == ["cadr-fileless"]
    )
    assert "memfd:cadr-fileless" in ev.process.exe and ev.process.exe.endswith("(deleted)")


def test_cgroup_v1_attribution(live_sensor, make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """On a v1 (or hybrid) host the container is found through its v1 cgroup path."""
    probe = live_sensor.sensor.probe
    if not probe.v1_subsys:
        pytest.skip("no cgroup v1 controller mounted")
    controller = next(
        name
        for name in ("pids", "memory", "cpu", "cpuacct", "devices", "freezer", "blkio")
        if Path("/sys/fs/cgroup", name) == Path(probe.v1_mount)
    )
    ctr = make_container("legacy", v1_controller=controller, v2=False)
    ctr.run(["/bin/sh", "-c", "echo cadr-v1-marker"], namespaces=False)
    [ev] = live_sensor.wait_for(
        lambda ev: ev.kind == "process_exec" and ev.process.args == ["/bin/sh", "-c", "echo cadr-v1-marker"]
    )
    assert ev.workload.container_id == ctr.container_id and ev.workload.pod == ctr.workload.pod


def test_health_events_count_drops(live_sensor) -> None:  # type: ignore[no-untyped-def]
    health = live_sensor.wait_for(lambda ev: ev.kind == "sensor_health", count=2)
    last = health[-1].health
    assert last.sensor == "ebpf"
    assert len(last.per_cpu_drops) == os.cpu_count() or len(last.per_cpu_drops) >= 1
    assert last.events > 0
    assert "kernel_drops_per_cpu" in last.detail and "user_drops_per_cpu" in last.detail


def test_small_ring_drops_are_counted_not_silent(workdir: Path) -> None:
    """A 64 KiB ring and a stalled consumer: losses show in the per-CPU kernel counters
    and in the health event, and delivered + dropped accounts for every record."""
    from sensors.ebpf.loader import ProbeConfig
    from sensors.ebpf.sensor import CollectSink, EbpfSensor, SensorOptions

    sensor = EbpfSensor(SensorOptions(node="t", probe=ProbeConfig(ring_bytes=1 << 16)), CollectSink())
    sensor.start()
    try:
        target = workdir / "flood"
        target.write_text("")
        # 5000 write-opens, each always reported: far more than 64 KiB holds
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import os\nfor _ in range(5000): os.close(os.open({str(target)!r}, os.O_WRONLY))",
            ],
            check=True,
        )
        stats = sensor.probe.stats()
        drops = sum(c["drops"] for c in stats)
        assert drops > 0
        delivered = 0
        while True:
            batch, nbytes = sensor.drain()
            events = [decode_event(value) for value, *_ in batch.items()]  # the JSON a sink gets
            delivered += sum(1 for ev in events if ev.file and ev.file.path == str(target))
            if not nbytes:
                break
        assert delivered > 0
        after = sensor.probe.stats()
        assert sum(c["seq"] for c in after) == sum(c["events"] + c["drops"] for c in after)
        health = sensor.health_event("running").health
        assert health.kernel_drops == sum(c["drops"] for c in after) > 0
        assert sum(health.per_cpu_drops) >= health.kernel_drops
    finally:
        sensor.close()


def test_sensor_never_reports_itself(live_sensor) -> None:  # type: ignore[no-untyped-def]
    Path("/etc/hostname").read_text()  # this process opens, forks, ... all the time
    live_sensor.wait_for(lambda ev: ev.kind == "sensor_health", count=2)
    assert not [ev for ev in live_sensor.events if ev.process and ev.process.pid == os.getpid()]


def _cli_sensor(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cadr.cli", "sensor", "ebpf", "--node", "clinode", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc


def _wait_started(proc: subprocess.Popen[bytes], ready, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"sensor exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "sensor did not start"
        time.sleep(0.1)


def test_cli_output_json_lines(make_container, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    """`cadr sensor ebpf --output FILE --workloads JSON`: JSON lines, one valid event each."""
    ctr = make_container("cli")
    wl_file = workdir / "workloads.json"
    wl_file.write_text(
        json.dumps({ctr.container_id: {"namespace": "shop", "pod": "cli-pod", "container": "cli"}})
    )
    out = workdir / "events.jsonl"
    proc = _cli_sensor(["--output", str(out), "--workloads", str(wl_file)], out)
    try:
        _wait_started(proc, lambda: out.exists() and b'"state":"started"' in out.read_bytes())
        ctr.run(["/bin/sh", "-c", "echo cadr-cli-marker"], namespaces=False)

        def marker() -> list[Event]:
            evs = [decode_event(line) for line in out.read_bytes().splitlines() if b"cadr-cli-marker" in line]
            return [
                e for e in evs if e.process and e.process.args == ["/bin/sh", "-c", "echo cadr-cli-marker"]
            ]

        _wait_started(proc, lambda: bool(marker()))
    finally:
        proc.send_signal(2)
        assert proc.wait(30) == 0
    [ev] = marker()
    assert (
        ev.node == "clinode" and ev.workload.pod == "cli-pod" and ev.workload.container_id == ctr.container_id
    )
    lines = out.read_bytes().splitlines()
    assert all(decode_event(line) for line in lines)
    assert b'"state":"stopped"' in lines[-1]


@pytest.mark.kafka
def test_cli_publishes_to_kafka_keyed_by_workload(
    kafka_broker, topic_prefix, make_container, workdir: Path
) -> None:  # type: ignore[no-untyped-def]
    """`cadr sensor ebpf --kafka`: the container's exec arrives on <prefix>raw, keyed by its workload."""
    import asyncio

    import msgspec

    from cadr.topics import ensure_topics
    from schemas.topics import topic_specs

    asyncio.run(ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix)))
    ctr = make_container("kafka")
    wl_file = workdir / "workloads.json"
    wl_file.write_text(
        json.dumps(
            {
                ctr.container_id: {
                    "namespace": "shop",
                    "pod": "k-pod",
                    "workload_kind": "Deployment",
                    "workload_name": "k",
                }
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cadr.cli", "--topic-prefix", topic_prefix, "sensor", "ebpf",
            "--kafka", kafka_broker.bootstrap, "--spool-dir", str(workdir / "spool"),
            "--workloads", str(wl_file), "--node", "kafkanode",
        ],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        from sensors.publisher import Publisher  # noqa: F401  (import check before waiting)

        got: list[tuple[bytes, Event]] = []

        async def consume() -> None:
            import time

            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                f"{topic_prefix}raw", bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            try:
                deadline = time.monotonic() + 90
                started = False
                while time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=500)
                    for msgs in batches.values():
                        for m in msgs:
                            if b'"state":"started"' in m.value and not started:
                                started = True
                                await asyncio.to_thread(
                                    ctr.run, ["/bin/sh", "-c", "echo cadr-kafka-marker"], namespaces=False
                                )
                            if b"echo cadr-kafka-marker" not in m.value:
                                continue
                            # one event (an object) or a workload's events folded into one
                            # record (a JSON array: the publisher's event-batch framing)
                            values = (
                                [bytes(r) for r in msgspec.json.decode(m.value, type=list[msgspec.Raw])]
                                if m.value.lstrip().startswith(b"[")
                                else [m.value]
                            )
                            for value in values:
                                ev = decode_event(value)
                                if ev.process and ev.process.args == [
                                    "/bin/sh",
                                    "-c",
                                    "echo cadr-kafka-marker",
                                ]:
                                    got.append((m.key, ev))
                                    return
            finally:
                await consumer.stop()

        asyncio.run(consume())
    finally:
        proc.send_signal(2)
        rc = proc.wait(60)
    assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    [(key, ev)] = got
    assert key == b"local/shop/Deployment/k" and ev.workload.container_id == ctr.container_id


def test_metrics_expose_drops_per_cpu(live_sensor) -> None:  # type: ignore[no-untyped-def]
    from sensors.ebpf.metrics import render

    text = render(live_sensor.sensor.counters())
    ncpu = len(live_sensor.sensor.probe.stats())
    for cpu in range(ncpu):
        assert f'cadr_sensor_kernel_drops_total{{cpu="{cpu}"}} ' in text
        assert f'cadr_sensor_user_drops_total{{cpu="{cpu}"}} ' in text
    assert "# TYPE cadr_sensor_kernel_events_total counter" in text


def test_links_arrive_as_file_link_and_the_link_rule_fires(
    live_sensor, make_container, workdir: Path
) -> None:  # type: ignore[no-untyped-def]
    """symlink, symlinkat, link and linkat made in a container arrive as file_link events (new link in
    file.path, what it points to in file.target), and CADR-FILE-0003 fires on a symlink to /etc/shadow."""
    from streams.detect import scan_events

    ctr = make_container("links")
    base = workdir / "links"
    base.mkdir()
    (base / "data").write_text("x")
    script = workdir / "links.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            AT_FDCWD = -100
            os.symlink("/etc/shadow", "{base}/shadow-link")                      # symlink or symlinkat
            assert libc.syscall(88, b"/etc/passwd", b"{base}/passwd-link") == 0   # symlink
            assert libc.syscall(86, b"{base}/data", b"{base}/hard-1") == 0        # link
            assert libc.syscall(265, AT_FDCWD, b"{base}/data", AT_FDCWD, b"{base}/hard-2", 0) == 0  # linkat
            assert libc.syscall(88, b"/x", b"/proc/nope/x") != 0                 # failed: not reported
            print("ok")
            """
        )
    )
    ctr.run(["/usr/bin/python3", str(script)], namespaces=False)

    def link(path: str) -> Event:
        return live_sensor.wait_for(
            lambda ev: _in(ctr, ev) and ev.kind == "file_link" and ev.file.path == path
        )[0]

    shadow = link(f"{base}/shadow-link")
    assert shadow.file.target == "/etc/shadow" and shadow.process is not None and shadow.workload.pod
    assert link(f"{base}/passwd-link").file.target == "/etc/passwd"
    assert link(f"{base}/hard-1").file.target == f"{base}/data"
    assert link(f"{base}/hard-2").file.target == f"{base}/data"
    assert not [e for e in live_sensor.events if e.kind == "file_link" and e.file.path == "/proc/nope/x"]
    fired = [a.rule_id for a in scan_events([shadow]) if a.rule_id == "CADR-FILE-0003"]
    assert fired == ["CADR-FILE-0003"]


def test_packet_sockets_and_io_uring_setup_arrive_as_privilege_change(
    live_sensor, make_container, workdir: Path
) -> None:  # type: ignore[no-untyped-def]
    """socket(AF_PACKET) and io_uring_setup from a container arrive as privilege_change (ops packet_socket,
    io_uring_setup) and the rules watching for them fire; an ordinary socket is not reported."""
    from schemas.settings import DetectSettings
    from streams.detect import scan_events

    ctr = make_container("raw")
    script = workdir / "raw.py"
    script.write_text(
        textwrap.dedent(
            """
            import ctypes, json, socket
            libc = ctypes.CDLL(None, use_errno=True)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            params = ctypes.create_string_buffer(120)
            ring = libc.syscall(425, 8, params)
            print(json.dumps({"io_uring": ring >= 0}))
            """
        )
    )
    out = ctr.run(["/usr/bin/python3", str(script)], namespaces=False)
    packet = live_sensor.wait_for(
        lambda ev: _in(ctr, ev) and ev.kind == "privilege_change" and ev.privilege.op == "packet_socket"
    )[0]
    assert packet.privilege.detail == "AF_PACKET SOCK_RAW"
    assert [a.rule_id for a in scan_events([packet]) if a.rule_id == "CADR-NET-0007"] == ["CADR-NET-0007"]
    ops = {e.privilege.op for e in live_sensor.events if _in(ctr, e) and e.kind == "privilege_change"}
    assert ops <= {"packet_socket", "io_uring_setup"}  # the AF_INET socket is not reported
    ring_ok = '"io_uring": true' in str(out)
    rings = [
        e
        for e in live_sensor.events
        if _in(ctr, e) and e.kind == "privilege_change" and e.privilege.op == "io_uring_setup"
    ]
    if ring_ok:  # kernels built or configured without io_uring refuse the call: nothing to report then
        ring = live_sensor.wait_for(
            lambda ev: _in(ctr, ev) and ev.kind == "privilege_change" and ev.privilege.op == "io_uring_setup"
        )[0]
        assert ring.privilege.detail == "8 entries"
        experimental = DetectSettings(experimental_rules=True)  # the io_uring rule is experimental
        fired = [a.rule_id for a in scan_events([ring], experimental) if a.rule_id == "CADR-PRIV-0007"]
        assert fired == ["CADR-PRIV-0007"]
    else:
        assert rings == []
    print("io_uring available:", ring_ok)
