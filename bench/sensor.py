"""Benchmark: the cadr eBPF sensor against bpftrace on the same bounded storms, same run.

    sudo .venv/bin/python bench/sensor.py [--opens 2000000] [--rate 200000] [--execs 3000]
                                          [--procs 2] [--backlog 1000000]

Workloads (a small C program compiled here: the generator itself does 200-350k opens/s
alone on this 2-vCPU machine, so a Python generator is not what bounds the storm):

* open storm: N write-opens of one marker file (each one is reported: writes are never
  deduplicated), paced at --rate opens/s (0 = as fast as possible), split over --procs
  worker processes;
* exec storm: N fork+exec of a marker copy of /bin/true (fork, exec, exit each).

Every storm is bounded in count and in time (--max-seconds); loss is counted against the
operations it actually did.

Each tool runs alone on each storm: ``cadr sensor ebpf --output FILE`` and a bpftrace
script capturing the same fields (``-f json`` to a file). Reported per run: events/s
captured, loss % (marker events expected vs found in the output), the tool's own CPU
seconds per 100k events (its process, all threads: the scheduler's run time, with the
user/system split from clock ticks), and the in-kernel BPF run time per event
(kernel.bpf_stats_enabled). Then the ratios cadr / bpftrace.

Under tracing, the storm's pace is bounded by the machine (each traced open costs the
generator its syscalls plus the BPF programs), so a last storm measures cadr's capacity
apart from it: the sensor is stopped (SIGSTOP) while --backlog opens fill its ring, then
resumed, and the "drain" row is the rate at which it writes them all out. The last lines
measure the Python decoder and the native consumer alone, without a kernel.

Needs root, kernel BTF, cc, bpftrace (Debian package) and tracefs (mounted here if absent).
Bounded: every storm has a fixed count and time limit, and every wait a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
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
/* The storm generator: N operations split over P worker processes, paced at RATE/s in
 * total (0 = as fast as they go), and bounded in time as well as count (MAX_S seconds).
 *   storm open|exec N RATE TARGET [P [MAX_S]]  ->  prints "<operations done> <seconds>"
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long worker(const char *kind, long n, double rate, const char *target, double t0, double deadline) {
    long i = 0;
    if (!strcmp(kind, "open")) {
        for (; i < n; i++) {
            int fd = open(target, O_WRONLY);
            if (fd < 0) return -1;
            close(fd);
            if ((i & 1023) == 1023) {                       /* pace in small bursts */
                double t = now();
                if (t > deadline) { i++; break; }
                double ahead = rate > 0 ? (i + 1) / rate - (t - t0) : 0;
                if (ahead > 0) { struct timespec s = {(long)ahead, (long)((ahead - (long)ahead) * 1e9)}; nanosleep(&s, 0); }
            }
        }
    } else {
        char *const args[] = {(char *)target, "x", 0};
        char *const env[] = {0};
        for (; i < n && now() < deadline; i++) {
            pid_t p = fork();
            if (p == 0) { execve(target, args, env); _exit(127); }
            int st; waitpid(p, &st, 0);
        }
    }
    return i;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    long n = atol(argv[2]); double rate = atof(argv[3]);
    int procs = argc > 5 ? atoi(argv[5]) : 1;
    double max_s = argc > 6 ? atof(argv[6]) : 300;
    if (procs < 1) procs = 1;
    long *done = mmap(0, sizeof(long) * procs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double t0 = now(), deadline = t0 + max_s;
    for (int w = 0; w < procs; w++) {
        long share = n / procs + (w < n % procs);
        pid_t p = fork();
        if (p == 0) { done[w] = worker(argv[1], share, rate / procs, argv[4], t0, deadline); _exit(done[w] < 0); }
    }
    int failed = 0, st;
    while (wait(&st) > 0) failed |= !WIFEXITED(st) || WEXITSTATUS(st);
    long total = 0;
    for (int w = 0; w < procs; w++) total += done[w] > 0 ? done[w] : 0;
    printf("%ld %.6f\n", total, now() - t0);
    return failed;
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
    #: CPU seconds of the tool's process over the storm: (total, user, system)
    cpu: tuple[float, float, float]
    bpf_ns: float

    @property
    def cpu_s(self) -> float:
        return self.cpu[0]

    @property
    def user_per_100k(self) -> float:
        return self.cpu[1] / self.captured * 100_000 if self.captured else float("inf")

    @property
    def sys_per_100k(self) -> float:
        return self.cpu[2] / self.captured * 100_000 if self.captured else float("inf")

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


def cpu_times(pid: int) -> tuple[float, float, float]:
    """CPU seconds of a process (all its threads): (total, user, system). The total is
    the scheduler's run time in ns (/proc/PID/task/*/schedstat); user and system come
    from /proc/PID/stat in clock ticks (10 ms), too coarse alone for a short storm."""
    total_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that just ended
            total_ns += int((task / "schedstat").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return total_ns / 1e9, int(fields[11]) / tck, int(fields[12]) / tck


def cpu_since(pid: int, before: tuple[float, float, float]) -> tuple[float, float, float]:
    now = cpu_times(pid)
    return now[0] - before[0], now[1] - before[1], now[2] - before[2]


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


@dataclass
class Storm:
    """How to run the generator: its binary, worker processes, time bound."""

    binary: Path
    procs: int = 1
    max_seconds: float = 120.0


def run_storm(storm: Storm, kind: str, n: int, rate: float, target: str) -> tuple[int, float]:
    """(operations done, seconds): at most ``n``, fewer if the time bound cut it short."""
    out = subprocess.run(
        [str(storm.binary), kind, str(n), str(rate), target, str(storm.procs), str(storm.max_seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=storm.max_seconds + 60,
    )
    done, seconds = out.stdout.split()
    return int(done), float(seconds)


def exec_counter(out: Path, target: str):  # type: ignore[no-untyped-def]
    """Counts cadr's fork/exec/exit events of the exec storm's children in ``out``."""

    def count() -> int:
        # the children's exec_ids from their exec events; forks and exits share them
        events = [json.loads(line) for line in out.read_bytes().splitlines() if b'"process_' in line]
        ids = {
            e["process"]["exec_id"]
            for e in events
            if e["kind"] == "process_exec" and e["process"].get("exe") == target
        }
        return sum(1 for e in events if e["process"]["exec_id"] in ids)

    return count


def start_cadr(out: Path, ring_mb: int, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*CADR, "sensor", "ebpf", "--output", str(out), "--ring-mb", str(ring_mb), "--node", "bench", *extra],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: out.exists() and b'"state":"started"' in out.read_bytes()[:4096], 60, "cadr to attach")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def cadr_health(out: Path) -> dict:  # type: ignore[type-arg]
    """The sensor's own account (its last health event)."""
    for line in reversed(out.read_bytes().splitlines()):
        if b'"state":"stopped"' in line:
            return json.loads(line)["health"]  # type: ignore[no-any-return]
    return {}


def bench_cadr(
    work: Path,
    storm: Storm,
    kind: str,
    n: int,
    rate: float,
    target: str,
    ring_mb: int,
    extra: tuple[str, ...] = (),
) -> Result:
    out = work / f"cadr-{kind}.jsonl"
    out.unlink(missing_ok=True)
    before = prog_ids()
    proc = start_cadr(out, ring_mb, extra)
    try:
        ids = prog_ids() - before
        cpu0, bpf0 = cpu_times(proc.pid), bpf_runtime_ns(ids)
        done, seconds = run_storm(storm, kind, n, rate, target)
        needle = target.encode()
        if kind == "open":
            expected = done
            count = lambda: count_lines(out, b'"path":"' + needle + b'"', b'"kind":"file_open"')  # noqa: E731
        else:
            expected = 3 * done  # fork, exec, exit of each child
            count = exec_counter(out, target)
        captured = settle(count, expected)
        cpu = cpu_since(proc.pid, cpu0)
        bpf = bpf_runtime_ns(ids) - bpf0
    finally:
        stop(proc)
    h = cadr_health(out)
    detail = h.get("detail", {})
    print(
        f"  cadr {kind}: kernel drops {h.get('kernel_drops', 0)} "
        f"({detail.get('kernel_drops_not_full', '?')} with room in the ring), user drops {h.get('user_drops', 0)}, "
        f"events {h.get('events', 0)}, consumer {detail.get('consumer', '?')}",
        flush=True,
    )
    return Result("cadr", kind, expected, min(captured, expected), seconds, cpu, bpf)


def bench_backlog(
    work: Path, storm: Storm, n: int, target: str, ring_mb: int, extra: tuple[str, ...] = ()
) -> Result:
    """How fast cadr drains a backlog: the sensor is stopped (SIGSTOP) while ``n`` opens
    fill its ring, then resumed; events/s = events / time to write them all out. This is
    the consumer's capacity, whatever pace the generator manages under tracing."""
    out = work / "cadr-backlog.jsonl"
    out.unlink(missing_ok=True)
    proc = start_cadr(out, ring_mb, extra)
    try:
        proc.send_signal(signal.SIGSTOP)
        done, _ = run_storm(storm, "open", n, 0, target)
        needle = b'"path":"' + target.encode() + b'"'
        cpu0 = cpu_times(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        # Watch the file size only (counting lines now would take CPU from the sensor):
        # draining writes megabytes per 20 ms tick, the machine's other processes a few
        # KB; the drain ended at the last tick that grew by more than 256 KB.
        last, since, deadline = out.stat().st_size, time.monotonic(), time.monotonic() + 300
        while time.monotonic() < deadline and time.monotonic() - since < 2.0:
            time.sleep(0.02)
            size = out.stat().st_size
            if size - last > 256 << 10:
                since = time.monotonic()
            last = size
        seconds = since - t0
        cpu = cpu_since(proc.pid, cpu0)
        captured = count_lines(out, needle, b'"kind":"file_open"')
    finally:
        proc.send_signal(signal.SIGCONT)
        stop(proc)
    h = cadr_health(out)
    print(
        f"  cadr backlog: kernel drops {h.get('kernel_drops', 0)}, user drops {h.get('user_drops', 0)}, "
        f"consumer {h.get('detail', {}).get('consumer', '?')}",
        flush=True,
    )
    return Result("cadr", "drain", done, min(captured, done), seconds, cpu, 0.0)


def bench_bpftrace(work: Path, storm: Storm, kind: str, n: int, rate: float, target: str) -> Result:
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
        cpu0, bpf0 = cpu_times(proc.pid), bpf_runtime_ns(ids)
        done, seconds = run_storm(storm, kind, n, rate, target)
        needle = target.encode()
        if kind == "open":
            expected = done
            count = lambda: count_lines(out, b" " + needle + b" ", b'"open ')  # noqa: E731
        else:
            expected = 3 * done
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
        cpu = cpu_since(proc.pid, cpu0)
        bpf = bpf_runtime_ns(ids) - bpf0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return Result("bpftrace", kind, expected, min(captured, expected), seconds, cpu, bpf)


def _bench_records(count: int = 1000) -> tuple[list[bytes], object]:
    """Open records of one containerised process, and the workload answer for them."""
    sys.path.insert(0, str(ROOT))
    from schemas.records import Workload
    from sensors.ebpf import layout

    path = b"/var/lib/app/data/cadr-bench.log"
    hdr = [layout.T_OPEN, layout.OPEN.size + len(path), 0, 0, 1, 4242, 4242, 123456, 1, 0, 654321, 7, 0, 1, 2]
    records = []
    for i in range(count):
        h = [*hdr, b"bench\0"]
        h[3] = i
        records.append(layout.OPEN.pack(*h, 0o1, 0o100644, 3, len(path), 1, 0, 99, 1, 0xEF53) + path)
    wl = (Workload(cluster="c", namespace="ns", pod="p", container_id="a" * 64), b"c/ns/Pod/p", None)
    return records, wl


def decoder_rate(n: int = 200_000) -> float:
    """Records/s of the Python decoder's JSON path alone (no kernel, no I/O)."""
    from sensors.ebpf.decode import BootClock, Decoder

    records, wl = _bench_records()
    buf = b"".join(records)
    size = len(records[0])
    offsets = list(range(0, len(buf), size))
    view = memoryview(buf)
    dec = Decoder("bench", BootClock(), lambda a, b: wl)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        for off in offsets:
            item = dec.decode_json(view, off, size)
            assert item is not None
        done += len(offsets)
    return done / (time.perf_counter() - t0)


def native_rate(n: int = 2_000_000) -> float | None:
    """Records/s of the native consumer alone (ring walk + JSON + handing Python the
    batch), on a ring laid out in a memfd the way the kernel maps one; None if the
    library is not built."""
    import mmap
    import struct

    from sensors.ebpf.decode import BootClock, Decoder
    from sensors.ebpf.native import NativeConsumer, load_library

    lib = load_library()
    if lib is None:
        return None
    records, wl = _bench_records()
    size, page = 4 << 20, mmap.PAGESIZE
    ring = bytearray()
    i = 0
    while len(ring) < size - (64 << 10):
        rec = records[i % len(records)]
        blob = struct.pack("<II", len(rec), 0) + rec
        ring += blob + b"\0" * (-len(blob) % 8)
        i += 1
    used, per_fill = len(ring), i
    ring += b"\0" * (size - len(ring))
    fd = os.memfd_create("cadr-bench-ring")
    try:
        os.ftruncate(fd, 2 * page + 2 * size)
        os.pwrite(fd, struct.pack("<Q", used), page)
        os.pwrite(fd, bytes(ring), 2 * page)
        os.pwrite(fd, bytes(ring), 2 * page + size)
        prod = mmap.mmap(fd, page + 2 * size, offset=page)
        cons = mmap.mmap(fd, page, offset=0)
        view = memoryview(prod)
        consumer = NativeConsumer(lib, Decoder("bench", BootClock(), lambda a, b: wl), view, fd, size)
        done = 0
        t0 = time.perf_counter()
        while done < n:
            struct.pack_into("<Q", cons, 0, 0)  # the same records again
            while True:
                batch, _, more = consumer.drain(2 << 20)
                done += len(batch)
                if not more:
                    break
        rate = done / (time.perf_counter() - t0)
        assert done % per_fill == 0
        consumer.close()
        view.release()
        prod.close()
        cons.close()
    finally:
        os.close(fd)
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=2_000_000, help="opens in the open storm (default: 2000000)")
    ap.add_argument(
        "--rate", type=float, default=200_000, help="open storm pace, opens/s; 0 = unpaced (default: 200000)"
    )
    ap.add_argument("--execs", type=int, default=10000, help="fork+execs in the exec storm (default: 10000)")
    ap.add_argument("--ring-mb", type=int, default=64, help="cadr ring buffer MiB (default: 64)")
    ap.add_argument(
        "--procs", type=int, default=2, help="storm worker processes sharing the count and pace (default: 2)"
    )
    ap.add_argument(
        "--max-seconds", type=float, default=120.0, help="time bound of each storm, seconds (default: 120)"
    )
    ap.add_argument(
        "--backlog",
        type=int,
        default=1_000_000,
        help="opens queued while cadr is stopped, then drained: its capacity; 0 = skip (default: 1000000)",
    )
    ap.add_argument(
        "--backlog-ring-mb", type=int, default=256, help="cadr ring MiB for the backlog test (default: 256)"
    )
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
            storm = Storm(work / "storm", args.procs, args.max_seconds)
            subprocess.run(["cc", "-O2", "-o", str(storm.binary), str(work / "storm.c")], check=True)
            target = work / "cadr-bench-open.dat"
            target.write_text("")
            exe = work / "cadrbenchtrue"
            shutil.copy("/bin/true", exe)
            plans = [("open", args.opens, args.rate, str(target)), ("exec", args.execs, 0.0, str(exe))]
            for kind, n, rate, tgt in plans:
                if args.only and kind != args.only:
                    continue
                done, alone = run_storm(storm, kind, n, rate, tgt)
                print(
                    f"storm {kind}: {done} operations in {alone:.2f}s with no tracer ({done / alone:,.0f}/s, "
                    f"{storm.procs} process(es))",
                    flush=True,
                )
                results.append(bench_cadr(work, storm, kind, n, rate, tgt, args.ring_mb))
                if not args.skip_bpftrace:
                    results.append(bench_bpftrace(work, storm, kind, n, rate, tgt))
                if kind == "open" and args.backlog:
                    results.append(bench_backlog(work, storm, args.backlog, tgt, args.backlog_ring_mb))
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(stats_before)
        if mounted_tracefs:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=False)

    print(
        f"{'tool':9} {'storm':5} {'expected':>9} {'captured':>9} {'loss %':>7} {'events/s':>10} "
        f"{'CPU s/100k':>10} {'(user':>6} {'sys)':>6} {'BPF ns/ev':>9}"
    )
    for r in results:
        print(
            f"{r.tool:9} {r.storm:5} {r.expected:9d} {r.captured:9d} {r.loss:7.2f} {r.rate:10.0f} "
            f"{r.cpu_per_100k:10.3f} {r.user_per_100k:6.3f} {r.sys_per_100k:6.3f} {r.bpf_ns_per_event:9.0f}"
        )
    by = {(r.tool, r.storm): r for r in results}
    for storm in ("open", "exec"):
        c, b = by.get(("cadr", storm)), by.get(("bpftrace", storm))
        if c and b:
            bpf_ratio = c.bpf_ns_per_event / b.bpf_ns_per_event if b.bpf_ns else float("nan")
            user_ratio = c.user_per_100k / b.user_per_100k if b.cpu[1] else float("nan")
            print(
                f"ratio cadr/bpftrace [{storm}]: "
                f"sensor process CPU (user+sys) per event {c.cpu_per_100k / b.cpu_per_100k:.2f}x "
                f"(user {user_ratio:.2f}x), "
                f"in-kernel BPF time per event {bpf_ratio:.2f}x, loss {c.loss:.2f}% vs {b.loss:.2f}%"
            )
    print(f"python decoder alone (decode + JSON encode): {decoder_rate():,.0f} events/s")
    native = native_rate()
    if native is None:
        print("native consumer alone: not built (sensors/ebpf/build.sh found no C compiler?)")
    else:
        print(f"native consumer alone (ring walk + JSON + batch to Python): {native:,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
