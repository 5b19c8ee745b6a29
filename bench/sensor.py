"""Benchmark: the cadr eBPF sensor against bpftrace on the same bounded storms, same run.

    sudo .venv/bin/python bench/sensor.py [--opens 2000000] [--rate 200000] [--execs 3000]

Workloads (a small C program compiled here, so the generator is not the bottleneck):

* open storm: N write-opens of one marker file (each one is reported: writes are never
  deduplicated), paced at --rate opens/s (0 = as fast as possible);
* exec storm: N fork+exec of a marker copy of /bin/true (fork, exec, exit each).

Each tool runs alone on each storm: ``cadr sensor ebpf --output FILE`` and a bpftrace
script capturing the same fields (``-f json`` to a file). Reported per run: events/s
captured, loss % (marker events expected vs found in the output), the tool's own CPU
seconds per 100k events (user+system of its process), and the in-kernel BPF run time per
event (kernel.bpf_stats_enabled). Then the ratios cadr / bpftrace. A last line measures
the Python decoder alone (records -> JSON bytes) from an in-memory buffer.

Needs root, kernel BTF, cc, bpftrace (Debian package) and tracefs (mounted here if absent).
Bounded: every storm has a fixed count and every wait a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CADR = [str(ROOT / ".venv" / "bin" / "python"), "-m", "cadr.cli"]

STORM_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    long n = atol(argv[2]); double rate = atof(argv[3]);
    double t0 = now();
    if (!strcmp(argv[1], "open")) {
        const char *path = argv[4];
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_WRONLY);
            if (fd < 0) return 1;
            close(fd);
            if (rate > 0 && (i & 1023) == 0) {          /* pace in small bursts */
                double ahead = (i / rate) - (now() - t0);
                if (ahead > 0) { struct timespec s = {0, (long)(ahead * 1e9)}; nanosleep(&s, 0); }
            }
        }
    } else {
        char *const args[] = {argv[4], "x", 0};
        char *const env[] = {0};
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { execve(argv[4], args, env); _exit(127); }
            int st; waitpid(p, &st, 0);
        }
    }
    printf("%.6f\n", now() - t0);
    return 0;
}
"""

BPFTRACE_OPEN = r"""
tracepoint:syscalls:sys_enter_openat /(args->flags & 3) != 0/ {
  @path[tid] = args->filename; @flags[tid] = args->flags;
}
tracepoint:syscalls:sys_exit_openat /@path[tid]/ {
  printf("open %d %d %s %d %s %d %d\n", pid, tid, comm, cgroup, str(@path[tid]), @flags[tid], args->ret);
  delete(@path[tid]); delete(@flags[tid]);
}
"""

BPFTRACE_EXEC = r"""
tracepoint:syscalls:sys_enter_execve { printf("argv %d ", pid); join(args->argv); }
tracepoint:sched:sched_process_exec {
  printf("exec %d %d %d %s %s %d\n", pid, curtask->real_parent->tgid, uid, comm, str(args->filename), cgroup);
}
tracepoint:sched:sched_process_fork { printf("fork %d %d\n", args->parent_pid, args->child_pid); }
tracepoint:sched:sched_process_exit { printf("exit %d %d\n", pid, curtask->exit_code); }
"""


@dataclass
class Result:
    tool: str
    storm: str
    expected: int
    captured: int
    seconds: float
    cpu_s: float
    bpf_ns: float

    @property
    def loss(self) -> float:
        return 100.0 * max(0, self.expected - self.captured) / self.expected

    @property
    def rate(self) -> float:
        return self.captured / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_s / self.captured * 100_000 if self.captured else float("inf")

    @property
    def bpf_ns_per_event(self) -> float:
        return self.bpf_ns / self.captured if self.captured else float("inf")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prog_ids() -> set[int]:
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=False
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def bpf_runtime_ns(ids: set[int]) -> int:
    """Total run_time_ns of the given BPF programs (kernel.bpf_stats_enabled=1)."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=False
    ).stdout
    return sum(int(p.get("run_time_ns") or 0) for p in json.loads(out or "[]") if int(p["id"]) in ids)


def count_lines(path: Path, needle: bytes, kind: bytes | None = None) -> int:
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            if needle in line and (kind is None or kind in line):
                n += 1
    return n


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.1)


def settle(count, expected: int, timeout: float = 60.0) -> int:  # type: ignore[no-untyped-def]
    """Wait until the count reaches ``expected`` or stops growing for 2 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        c = count()
        if c >= expected:
            return c
        if c != last:
            last, since = c, time.monotonic()
        elif time.monotonic() - since > 2.0:
            return c
        time.sleep(0.2)
    return count()


def run_storm(storm: Path, kind: str, n: int, rate: float, target: str) -> float:
    out = subprocess.run(
        [str(storm), kind, str(n), str(rate), target], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def bench_cadr(work: Path, storm: Path, kind: str, n: int, rate: float, target: str, ring_mb: int) -> Result:
    out = work / f"cadr-{kind}.jsonl"
    out.unlink(missing_ok=True)
    before = prog_ids()
    proc = subprocess.Popen(
        [*CADR, "sensor", "ebpf", "--output", str(out), "--ring-mb", str(ring_mb), "--node", "bench"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: out.exists() and b'"state":"started"' in out.read_bytes()[:4096], 60, "cadr to attach"
        )
        ids = prog_ids() - before
        cpu0, bpf0 = cpu_seconds(proc.pid), bpf_runtime_ns(ids)
        seconds = run_storm(storm, kind, n, rate, target)
        needle = target.encode()
        if kind == "open":
            expected = n
            count = lambda: count_lines(out, b'"path":"' + needle + b'"', b'"kind":"file_open"')  # noqa: E731
        else:
            expected = 3 * n  # fork, exec, exit of each child

            def count() -> int:
                # the children's exec_ids from their exec events; forks and exits share them
                events = [json.loads(line) for line in out.read_bytes().splitlines() if b'"process_' in line]
                ids = {
                    e["process"]["exec_id"]
                    for e in events
                    if e["kind"] == "process_exec" and e["process"].get("exe") == target
                }
                return sum(1 for e in events if e["process"]["exec_id"] in ids)

        captured = settle(count, expected)
        cpu = cpu_seconds(proc.pid) - cpu0
        bpf = bpf_runtime_ns(ids) - bpf0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    # the sensor's own account of losses, from its last health event
    for line in reversed(out.read_bytes().splitlines()):
        if b'"state":"stopped"' in line:
            h = json.loads(line)["health"]
            print(
                f"  cadr {kind}: kernel drops {h.get('kernel_drops', 0)}, "
                f"user drops {h.get('user_drops', 0)}, "
                f"events {h.get('events', 0)}",
                flush=True,
            )
            break
    return Result("cadr", kind, expected, min(captured, expected), seconds, cpu, bpf)


def bench_bpftrace(work: Path, storm: Path, kind: str, n: int, rate: float, target: str) -> Result:
    script = work / f"bt-{kind}.bt"
    script.write_text(BPFTRACE_OPEN if kind == "open" else BPFTRACE_EXEC)
    out = work / f"bt-{kind}.json"
    out.unlink(missing_ok=True)
    before = prog_ids()
    proc = subprocess.Popen(
        ["bpftrace", "-f", "json", "-o", str(out), str(script)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: out.exists() and b"attached_probes" in out.read_bytes()[:4096], 60, "bpftrace to attach"
        )
        time.sleep(0.5)
        ids = prog_ids() - before
        cpu0, bpf0 = cpu_seconds(proc.pid), bpf_runtime_ns(ids)
        seconds = run_storm(storm, kind, n, rate, target)
        needle = target.encode()
        if kind == "open":
            expected = n
            count = lambda: count_lines(out, b" " + needle + b" ", b'"open ')  # noqa: E731
        else:
            expected = 3 * n
            comm = Path(target).name.encode()[:15]

            def count() -> int:
                # exec lines name the marker; fork/exit lines of the same pids count too
                pids: set[bytes] = set()
                lines = out.read_bytes().splitlines()
                for line in lines:
                    if b'"exec ' in line and b" " + comm + b" " in line:
                        pids.add(line.split(b'"exec ', 1)[1].split(b" ", 1)[0])
                n_ev = 0
                for line in lines:
                    for tag in (b'"exec ', b'"exit '):
                        if tag in line and line.split(tag, 1)[1].split(b" ", 1)[0] in pids:
                            n_ev += 1
                    if (
                        b'"fork ' in line
                        and line.split(b'"fork ', 1)[1].split(b" ")[1].strip(b'\\n"}') in pids
                    ):
                        n_ev += 1
                return n_ev

        captured = settle(count, expected)
        cpu = cpu_seconds(proc.pid) - cpu0
        bpf = bpf_runtime_ns(ids) - bpf0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return Result("bpftrace", kind, expected, min(captured, expected), seconds, cpu, bpf)


def decoder_rate(n: int = 200_000) -> float:
    """Records/s of the Python decoder's JSON path alone (no kernel, no I/O)."""
    sys.path.insert(0, str(ROOT))
    from schemas.records import Workload
    from sensors.ebpf import layout
    from sensors.ebpf.decode import BootClock, Decoder

    path = b"/var/lib/app/data/cadr-bench.log"
    hdr = (
        layout.T_OPEN,
        layout.OPEN.size + len(path),
        0,
        0,
        1,
        4242,
        4242,
        123456,
        1,
        0,
        654321,
        7,
        0,
        1,
        2,
        b"bench\0",
    )
    buf = bytearray()
    offsets = []
    for i in range(1000):
        h = list(hdr)
        h[3] = i
        offsets.append(len(buf))
        buf += layout.OPEN.pack(*h, 0o1, 0o100644, 3, len(path), 1, 0, 99, 1, 0xEF53) + path
    view = memoryview(bytes(buf))
    wl = (Workload(cluster="c", namespace="ns", pod="p", container_id="a" * 64), b"c/ns/Pod/p", None)
    dec = Decoder("bench", BootClock(), lambda a, b: wl)
    size = layout.OPEN.size + len(path)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        for off in offsets:
            item = dec.decode_json(view, off, size)
            assert item is not None
        done += len(offsets)
    return done / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=2_000_000, help="opens in the open storm (default: 2000000)")
    ap.add_argument(
        "--rate", type=float, default=200_000, help="open storm pace, opens/s; 0 = unpaced (default: 200000)"
    )
    ap.add_argument("--execs", type=int, default=3000, help="fork+execs in the exec storm (default: 3000)")
    ap.add_argument("--ring-mb", type=int, default=64, help="cadr ring buffer MiB (default: 64)")
    ap.add_argument("--skip-bpftrace", action="store_true", help="cadr only (default: both)")
    ap.add_argument("--only", choices=("open", "exec"), help="run one storm (default: both)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("bench/sensor.py needs root (it loads BPF programs)", file=sys.stderr)
        return 2
    for tool in ("cc", "bpftool") + (() if args.skip_bpftrace else ("bpftrace",)):
        if not shutil.which(tool):
            print(f"bench/sensor.py needs {tool}", file=sys.stderr)
            return 2
    mounted_tracefs = False
    if not args.skip_bpftrace and not Path("/sys/kernel/tracing/events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
        mounted_tracefs = True
    stats_before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cadr-bench-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)
            (work / "storm.c").write_text(STORM_C)
            storm = work / "storm"
            subprocess.run(["cc", "-O2", "-o", str(storm), str(work / "storm.c")], check=True)
            target = work / "cadr-bench-open.dat"
            target.write_text("")
            exe = work / "cadrbenchtrue"
            shutil.copy("/bin/true", exe)
            plans = [("open", args.opens, args.rate, str(target)), ("exec", args.execs, 0.0, str(exe))]
            for kind, n, rate, tgt in plans:
                if args.only and kind != args.only:
                    continue
                alone = run_storm(storm, kind, n, rate, tgt)
                print(
                    f"storm {kind}: {n} operations in {alone:.2f}s with no tracer ({n / alone:,.0f}/s)",
                    flush=True,
                )
                results.append(bench_cadr(work, storm, kind, n, rate, tgt, args.ring_mb))
                if not args.skip_bpftrace:
                    results.append(bench_bpftrace(work, storm, kind, n, rate, tgt))
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(stats_before)
        if mounted_tracefs:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=False)

    print(
        f"{'tool':9} {'storm':5} {'expected':>9} {'captured':>9} {'loss %':>7} {'events/s':>10} "
        f"{'CPU s/100k':>10} {'BPF ns/ev':>9}"
    )
    for r in results:
        print(
            f"{r.tool:9} {r.storm:5} {r.expected:9d} {r.captured:9d} {r.loss:7.2f} {r.rate:10.0f} "
            f"{r.cpu_per_100k:10.3f} {r.bpf_ns_per_event:9.0f}"
        )
    by = {(r.tool, r.storm): r for r in results}
    for storm in ("open", "exec"):
        c, b = by.get(("cadr", storm)), by.get(("bpftrace", storm))
        if c and b:
            bpf_ratio = c.bpf_ns_per_event / b.bpf_ns_per_event if b.bpf_ns else float("nan")
            print(
                f"ratio cadr/bpftrace [{storm}]: "
                f"user-space CPU per event {c.cpu_per_100k / b.cpu_per_100k:.2f}x, "
                f"in-kernel BPF time per event {bpf_ratio:.2f}x, loss {c.loss:.2f}% vs {b.loss:.2f}%"
            )
    print(f"python decoder alone (decode + JSON encode): {decoder_rate():,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
