"""Find (or build) the BPF object, configure it, load it, attach it.

:func:`preflight` says what this machine lacks to run the sensor; :class:`Probe` owns the
loaded object: its ring buffer, its per-CPU counters and the sensitive-prefix map.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sensors.ebpf import layout
from sensors.ebpf.errors import SensorError, SensorUnavailableError
from sensors.ebpf.libbpf import BpfObject, libbpf
from sensors.ebpf.ringbuf import RingBuffer

__all__ = [
    "BUILD_SCRIPT",
    "DEFAULT_OBJECT",
    "DEFAULT_SENSITIVE_PREFIXES",
    "Probe",
    "ProbeConfig",
    "build_object",
    "cgroup2_mount",
    "preflight",
    "v1_hierarchy",
]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_OBJECT = HERE / "build" / "cadr.bpf.o"
BTF_PATH = "/sys/kernel/btf/vmlinux"

#: Reads under these are reported once per process (not once per container): credentials,
#: keys, service-account tokens, persistence points. Whole components only.
DEFAULT_SENSITIVE_PREFIXES = (
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/pam.d",
    "/etc/ssh",
    "/root/.ssh",
    "/root/.bash_history",
    "/etc/kubernetes",
    "/var/lib/kubelet",
    "/var/run/secrets",
    "/run/secrets",
    "/etc/ld.so.preload",
    "/etc/crontab",
    "/etc/cron.d",
    "/var/spool/cron",
    "/proc/kcore",
    "/dev/mem",
    "/root/.kube",
    "/root/.docker",
    "/root/.aws",
)

#: v1 controllers to read a container's cgroup from, in order of preference
V1_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "devices", "freezer", "blkio")


@dataclass
class ProbeConfig:
    """How to load the BPF programs."""

    object_path: str = str(DEFAULT_OBJECT)
    ring_bytes: int = 16 << 20
    #: force a consumer wake-up once this many bytes wait (else the poll timer drains)
    wakeup_bytes: int = 1 << 20
    args_max: int = 1024
    features: int = layout.FEAT_ALL
    dns_ports: tuple[int, ...] = (53,)
    sensitive_prefixes: tuple[str, ...] = DEFAULT_SENSITIVE_PREFIXES
    #: v1 controller whose cgroup id each record carries: "auto", "" (none) or a name
    v1_controller: str = "auto"
    #: build the object with build.sh when it is missing (needs clang and bpftool)
    build: bool = True
    #: process whose events are not traced (the sensor itself); 0 = this process
    self_tgid: int = 0
    #: where the host's /sys/fs/cgroup is mounted (in a pod: a hostPath mount, since the
    #: pod's own /sys/fs/cgroup shows only its cgroup namespace); "" = this mount namespace
    host_cgroup: str = ""


def cgroup2_mount(mounts: str = "/proc/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid hosts,
    ``/sys/fs/cgroup/unified``), or None."""
    try:
        with open(mounts) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        return None
    return None


def host_cgroup_roots(root: str) -> tuple[str | None, dict[str, str]]:
    """(cgroup2 root, {v1 controller: dir}) under a host /sys/fs/cgroup mounted at ``root``."""
    base = Path(root)
    v2 = None
    for candidate in (base / "unified", base):
        if (candidate / "cgroup.controllers").exists():
            v2 = str(candidate)
            break
    v1 = (
        {p.name: str(p) for p in base.iterdir() if p.is_dir() and (p / "tasks").exists()}
        if base.is_dir()
        else {}
    )
    return v2, v1


def v1_hierarchy(
    controller: str = "auto", mounts: str = "/proc/mounts", v1_dirs: dict[str, str] | None = None
) -> tuple[int, int, str] | None:
    """(subsystem index, hierarchy id, mount point) of a mounted cgroup v1 controller.

    The index is the controller's position in /proc/cgroups, which lists subsystems in the
    kernel's ``enum cgroup_subsys_id`` order (what ``css_set->subsys[]`` is indexed by).
    """
    if not controller:
        return None
    try:
        rows = [ln.split() for ln in Path("/proc/cgroups").read_text().splitlines() if not ln.startswith("#")]
        mount_lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    index = {r[0]: (i, int(r[1])) for i, r in enumerate(rows) if len(r) >= 4}
    v1_mounts: dict[str, str] = dict(v1_dirs or {})
    for line in [] if v1_dirs is not None else mount_lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "cgroup":
            for opt in parts[3].split(","):
                v1_mounts.setdefault(opt, parts[1])
    wanted = V1_CONTROLLERS if controller == "auto" else (controller,)
    for name in wanted:
        if name in index and index[name][1] > 0 and name in v1_mounts:
            return index[name][0], index[name][1], v1_mounts[name]
    return None


def _self_identity(tgid: int = 0) -> dict[str, int]:
    """This process as the kernel can recognise it from any pid namespace: its pid
    namespace (nsfs dev, inode) and its tgid in there."""
    st = os.stat("/proc/self/ns/pid")
    # the helper compares the kernel's dev_t (major << 20 | minor), not stat's encoding
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    return {"self_ns_dev": dev, "self_ns_ino": st.st_ino, "self_tgid": tgid or os.getpid()}


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def preflight(object_path: str | None = None, *, build: bool = True) -> list[str]:
    """What is missing to run the eBPF sensor here (empty: nothing)."""
    missing: list[str] = []
    caps = _effective_caps()
    if not caps & (1 << _CAP_SYS_ADMIN):
        lacking = [
            name
            for bit, name in ((_CAP_BPF, "CAP_BPF"), (_CAP_PERFMON, "CAP_PERFMON"))
            if not caps & (1 << bit)
        ]
        if lacking:
            missing.append(
                f"{' and '.join(lacking)} (run as root, or grant them): the sensor loads tracing BPF programs"
            )
    if not os.path.exists(BTF_PATH):
        missing.append(f"kernel BTF at {BTF_PATH} (a kernel built with CONFIG_DEBUG_INFO_BTF=y)")
    try:
        libbpf()
    except SensorError as exc:
        missing.append(str(exc))
    obj = Path(object_path or DEFAULT_OBJECT)
    if not obj.exists():
        tools = [t for t in ("clang", "bpftool") if shutil.which(t) is None]
        if not build or tools:
            how = f"install {', '.join(tools)} and " if tools else ""
            missing.append(f"the BPF object {obj} ({how}run scripts/build-bpf.sh)")
    if cgroup2_mount() is None:
        missing.append("a cgroup v2 mount (containers are found by cgroup id)")
    return missing


def build_object(out_dir: Path | None = None) -> Path:
    """Run build.sh (idempotent) and return the object's path."""
    cmd = [str(BUILD_SCRIPT)]
    if out_dir is not None:
        cmd += ["--out", str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SensorUnavailableError(f"building the BPF object failed: {proc.stderr.strip()}")
    return Path(proc.stdout.strip().splitlines()[-1])


class Probe:
    """The loaded and attached BPF programs of one sensor."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        missing = preflight(config.object_path, build=config.build)
        if missing:
            raise SensorUnavailableError("the eBPF sensor cannot run here; missing: " + "; ".join(missing))
        path = Path(config.object_path)
        have_tools = all(shutil.which(t) for t in ("clang", "bpftool"))
        # Rebuild the default object when the tools are here (a no-op unless a source
        # changed); a deployed image ships the object and no compiler.
        if not path.exists() or (config.build and have_tools and path == DEFAULT_OBJECT):
            path = build_object(path.parent if path != DEFAULT_OBJECT else None)
        ring = config.ring_bytes
        if ring & (ring - 1) or ring < 1 << 16:
            raise SensorError(f"ring buffer size {ring} must be a power of two >= 64 KiB")
        self.ncpus = int(libbpf().libbpf_num_possible_cpus())
        if config.host_cgroup:
            self.cgroup2, v1_dirs = host_cgroup_roots(config.host_cgroup)
            if self.cgroup2 is None:
                raise SensorUnavailableError(f"no cgroup v2 hierarchy under {config.host_cgroup}")
            v1 = v1_hierarchy(config.v1_controller, v1_dirs=v1_dirs)
        else:
            self.cgroup2 = cgroup2_mount()
            v1 = v1_hierarchy(config.v1_controller)
        self.v1_subsys, self.v1_hierarchy_id, self.v1_mount = (v1[0] + 1, v1[1], v1[2]) if v1 else (0, 0, "")
        self.obj = BpfObject(str(path))
        try:
            self.obj.set_max_entries("events", ring)
            self.obj.set_max_entries("scratch", self.ncpus)
            self.obj.set_initial_value(
                ".rodata.cfg",
                layout.pack_config(
                    **_self_identity(config.self_tgid),
                    wakeup_bytes=min(config.wakeup_bytes, ring // 2),
                    v1_subsys=self.v1_subsys,
                    args_max=config.args_max,
                    features=config.features,
                    dns_ports=config.dns_ports,
                ),
            )
            self.obj.load()
            for prefix in config.sensitive_prefixes:
                self.add_sensitive(prefix)
            self.ring = RingBuffer(self.obj.map_fd("events"), ring)
            self.programs = self.obj.attach_all()
        except BaseException:
            self.obj.close()
            raise
        log.info("eBPF sensor attached: %s (ring %d MiB)", ", ".join(self.programs), ring >> 20)

    def add_sensitive(self, prefix: str) -> None:
        raw = prefix.rstrip("/").encode()
        if not raw.startswith(b"/") or len(raw) >= layout.SENSITIVE_KEY or raw.count(b"/") > 4:
            raise SensorError(
                f"sensitive prefix {prefix!r}: must be absolute, under {layout.SENSITIVE_KEY} bytes "
                "and at most 4 components deep"
            )
        self.obj.update("sensitive", raw.ljust(layout.SENSITIVE_KEY, b"\0"), b"\1")

    def stats(self) -> list[dict[str, int]]:
        """The kernel counters of each CPU."""
        size = layout.STATS.size
        stride = (size + 7) & ~7
        raw = self.obj.lookup("stats", b"\0\0\0\0", stride * self.ncpus)
        if raw is None:
            return [dict.fromkeys(layout.STATS_FIELDS, 0) for _ in range(self.ncpus)]
        return [
            dict(zip(layout.STATS_FIELDS, layout.STATS.unpack_from(raw, i * stride), strict=True))
            for i in range(self.ncpus)
        ]

    def close(self) -> None:
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
        self.obj.close()
