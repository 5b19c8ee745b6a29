"""Fixtures of the sensor tests: a live eBPF sensor and test "containers".

A container here is what a runtime makes: a cgroup under the cgroup2 mount whose path
carries a container id (``.../pod<uid>/<64 hex>``, the containerd cgroupfs layout), plus
``unshare`` mount/pid/net/uts namespaces. The sensor runs in its own thread and event loop
for the whole module (loading the programs takes a moment), collecting every event;
tests wait for the events they expect with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from schemas.records import Event, Workload
from sensors.containers import StaticWorkloadResolver

BTF = "/sys/kernel/btf/vmlinux"


def ebpf_unavailable() -> str | None:
    """Why the kernel tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists(BTF):
        return f"needs kernel BTF at {BTF}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = ebpf_unavailable()
    if reason is None:
        return
    for item in items:
        if "ebpf" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def cgroup2_root() -> Path:
    from sensors.ebpf.loader import cgroup2_mount

    mount = cgroup2_mount()
    assert mount, "no cgroup2 mount"
    return Path(mount)


class LiveSensor:
    """An EbpfSensor running in a background thread, collecting events in memory."""

    def __init__(self, resolver: StaticWorkloadResolver, **probe_overrides: object) -> None:
        from sensors.ebpf.loader import ProbeConfig
        from sensors.ebpf.sensor import CollectSink, EbpfSensor, SensorOptions

        self.resolver = resolver
        self.sink = CollectSink()
        self.sensor = EbpfSensor(
            SensorOptions(
                node="testnode",
                cluster="test",
                probe=ProbeConfig(**probe_overrides),  # type: ignore[arg-type]
                health_interval_s=1.0,
            ),
            self.sink,
            resolver,
        )
        self.sensor.start()  # load + attach in the test thread: errors surface here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ebpf-sensor", daemon=True)
        self._error: BaseException | None = None
        self._thread.start()
        self.wait_for(lambda ev: ev.kind == "sensor_health", timeout=30)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self.sensor.run())
        except BaseException as exc:  # surfaced by wait_for / close
            self._error = exc

    @property
    def events(self) -> list[Event]:
        return list(self.sink.events)

    def wait_for(
        self, predicate: Callable[[Event], bool], *, count: int = 1, timeout: float = 20.0
    ) -> list[Event]:
        """Events matching ``predicate`` once at least ``count`` arrived (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise AssertionError(f"sensor died: {self._error!r}")
            found = [ev for ev in self.sink.events if predicate(ev)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} matching event(s), saw {len(found)}")
            time.sleep(0.05)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.sensor.stop)
        self._thread.join(30)
        self.sensor.close()
        if self._error is not None:
            raise self._error


class RecordingResolver(StaticWorkloadResolver):
    """The pod watch's answers, remembering which containers the sensor asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def resolve(self, container_id: str) -> Workload | None:
        self.asked.add(container_id)
        return super().resolve(container_id)


@pytest.fixture(scope="module")
def resolver() -> RecordingResolver:
    return RecordingResolver()


@pytest.fixture(scope="module")
def live_sensor(resolver: StaticWorkloadResolver) -> Iterator[LiveSensor]:
    sensor = LiveSensor(resolver)
    yield sensor
    sensor.close()


@dataclass
class Container:
    """A cgroup (and, through :meth:`run`, namespaces) standing in for a container."""

    container_id: str
    pod_uid: str
    cgroup: Path
    workload: Workload
    extra_cgroups: list[Path] = field(default_factory=list)

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.cgroup).st_ino

    def run(self, argv: list[str], *, namespaces: bool = True, timeout: float = 60, **kw: object) -> str:
        """Run argv inside the container: join the cgroup(s), then unshare namespaces."""
        join = " && ".join(f"echo $$ > {c}/cgroup.procs" for c in [self.cgroup, *self.extra_cgroups])
        inner = ["unshare", "-m", "-p", "-n", "-u", "-f", "--mount-proc", *argv] if namespaces else argv
        proc = subprocess.run(
            ["sh", "-c", f'{join} && exec "$@"', "cadr-join", *inner],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,  # type: ignore[arg-type]
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"container command failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}"
            )
        return proc.stdout


def _remove_cgroup(path: Path) -> None:
    # processes are gone by now; a dying one may hold the cgroup for a moment
    deadline = time.monotonic() + 10
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        while True:
            try:
                sub.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    with contextlib.suppress(OSError):
        path.rmdir()


@pytest.fixture
def make_container(resolver: StaticWorkloadResolver) -> Iterator[Callable[..., Container]]:
    """Factory: ``make_container(name)`` creates a Kubernetes-style container cgroup and
    registers its workload with the module's resolver."""
    roots: list[Path] = []

    def make(
        name: str = "app", *, v1_controller: str | None = None, v2: bool = True, register: bool = True
    ) -> Container:
        cid = secrets.token_hex(32)
        uid = str(uuid.uuid4())
        top = f"cadr-test-{secrets.token_hex(4)}"
        rel = Path(top, "kubepods", "besteffort", f"pod{uid}", cid)
        extra = []
        if v2:
            cg = cgroup2_root() / rel
            cg.mkdir(parents=True)
            roots.append(cgroup2_root() / top)
        if v1_controller:
            v1 = Path("/sys/fs/cgroup", v1_controller) / rel
            v1.mkdir(parents=True)
            roots.append(Path("/sys/fs/cgroup", v1_controller, top))
            if v2:
                extra.append(v1)
            else:
                cg = v1
        wl = Workload(
            cluster="test",
            namespace="shop",
            pod=f"{name}-7d9f-x2x",
            container=name,
            workload_kind="Deployment",
            workload_name=name,
            image=f"registry.local/{name}:1",
        )
        if register:  # else the test plays the pod watch: resolver.add(...) when the pod "arrives"
            resolver.add(f"containerd://{cid}", wl)
        return Container(container_id=cid, pod_uid=uid, cgroup=cg, workload=wl, extra_cgroups=extra)

    yield make
    for root in roots:
        _remove_cgroup(root)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # world-readable: the scenario drops privileges in a child
    tmp_path.chmod(0o755)
    return tmp_path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
