"""cgroup id -> cgroup path -> container -> workload, cached.

Every record carries the task's cgroup v2 id (the kernfs id, which is the inode number of
the cgroup's directory) and, on hosts with cgroup v1 controllers, the id of its cgroup in
one v1 hierarchy. Paths come from a scan of the hierarchy at start, then from the
``cgroup_mkdir`` records the kernel sends as runtimes create containers, so a new
container is known before its first process runs; a miss triggers a (rate-limited)
rescan. Removed cgroups are forgotten after a grace period, since records of their last
processes may still be in the ring buffer.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable

import msgspec

from schemas.records import Workload
from sensors.containers import ContainerRef, WorkloadResolver, container_from_cgroup

__all__ = ["Attribution", "CgroupIndex"]

log = logging.getLogger(__name__)


class CgroupIndex:
    """Paths of cgroup ids in the v2 hierarchy and (optionally) one v1 hierarchy."""

    def __init__(
        self,
        v2_root: str | None,
        v1_root: str | None = None,
        v1_hierarchy: int = 0,
        *,
        rescan_interval_s: float = 1.0,
        forget_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.v2_root = v2_root
        self.v1_root = v1_root
        self.v1_hierarchy = v1_hierarchy
        self.v2: dict[int, str] = {}
        self.v1: dict[int, str] = {}
        self._rescan_interval = rescan_interval_s
        self._forget_after = forget_after_s
        self._clock = clock
        self._last_scan = {"v2": -1e18, "v1": -1e18}
        self._removed: collections.deque[tuple[float, int, int]] = collections.deque()
        self.scans = 0

    @staticmethod
    def _scan_tree(root: str) -> dict[int, str]:
        out: dict[int, str] = {}
        root = root.rstrip("/")
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue  # removed while walking
            out[ino] = dirpath[len(root) :] or "/"
        return out

    def scan(self) -> None:
        """Rebuild both maps from the filesystem."""
        if self.v2_root:
            self.v2.update(self._scan_tree(self.v2_root))
            self._last_scan["v2"] = self._clock()
        if self.v1_root:
            self.v1.update(self._scan_tree(self.v1_root))
            self._last_scan["v1"] = self._clock()
        self.scans += 1

    def _maybe_rescan(self, which: str) -> bool:
        now = self._clock()
        if now - self._last_scan[which] < self._rescan_interval:
            return False
        root = self.v2_root if which == "v2" else self.v1_root
        if not root:
            return False
        target = self.v2 if which == "v2" else self.v1
        target.update(self._scan_tree(root))
        self._last_scan[which] = now
        self.scans += 1
        return True

    def path(self, cgroup_id: int, *, v1: bool = False) -> str | None:
        table = self.v1 if v1 else self.v2
        path = table.get(cgroup_id)
        if path is None and self._maybe_rescan("v1" if v1 else "v2"):
            path = table.get(cgroup_id)
        return path

    def on_mkdir(self, hierarchy: int, cgroup_id: int, path: str) -> bool:
        """Learn a new cgroup from the kernel; True when it belongs to a tracked hierarchy."""
        if hierarchy == 0:
            self.v2[cgroup_id] = path or "/"
            return True
        if self.v1_hierarchy and hierarchy == self.v1_hierarchy:
            self.v1[cgroup_id] = path or "/"
            return True
        return False

    def on_rmdir(self, hierarchy: int, cgroup_id: int) -> None:
        self._removed.append((self._clock() + self._forget_after, hierarchy, cgroup_id))
        self.expire()

    def expire(self) -> None:
        now = self._clock()
        while self._removed and self._removed[0][0] <= now:
            _, hierarchy, cgroup_id = self._removed.popleft()
            table = self.v2 if hierarchy == 0 else self.v1
            table.pop(cgroup_id, None)


class Attribution:
    """The workload of each (cgroup v2 id, cgroup v1 id) pair, cached.

    A container the resolver does not know yet is reported with its id only and asked
    again after ``unknown_ttl_s``; a host cgroup yields the host workload (no pod, no
    container id: :attr:`Workload.is_host`).
    """

    def __init__(
        self,
        index: CgroupIndex,
        resolver: WorkloadResolver | None = None,
        *,
        cluster: str = "",
        unknown_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.resolver = resolver
        self.cluster = cluster
        self.host = Workload(cluster=cluster)
        self._ttl = unknown_ttl_s
        self._clock = clock
        # (v2 id, v1 id) -> (workload, kafka key, expires at or None)
        self._cache: dict[tuple[int, int], tuple[Workload, bytes, float | None]] = {}
        self.host_key = self.host.key().encode()
        #: bumped whenever a cached answer may have changed (a cgroup came or went)
        self.generation = 0
        #: Kafka key -> container id of Kubernetes containers (their cgroup names a pod) the resolver
        #: did not know when asked: their events wait in :class:`~sensors.ebpf.hold.AttributionHold`
        self.pending: dict[bytes, str] = {}
        self._resolver_version: object = getattr(resolver, "version", None)

    def current_generation(self) -> int:
        """:attr:`generation`, moved on when the resolver's answers may have changed (a resolver with a
        ``version``, like the pod cache: a pod got its IP, new labels, another image): cached workloads
        are dropped, so events stop carrying what the pod watch said when the container first ran."""
        version = getattr(self.resolver, "version", None)
        if version != self._resolver_version:
            self._resolver_version = version
            self._cache.clear()
            self.generation += 1
        return self.generation

    def container(self, cgroup_id: int, cgroup_v1: int = 0) -> ContainerRef | None:
        path = self.index.path(cgroup_id)
        ref = container_from_cgroup(path) if path else None
        if ref is None and cgroup_v1:
            path1 = self.index.path(cgroup_v1, v1=True)
            ref = container_from_cgroup(path1) if path1 else None
        return ref

    def lookup(self, cgroup_id: int, cgroup_v1: int = 0) -> tuple[Workload, bytes, float | None]:
        """(workload, Kafka key, expiry) of a record's cgroups; expiry is None for an answer
        that holds until the cgroup changes (see :attr:`generation`), else a monotonic time."""
        key = (cgroup_id, cgroup_v1)
        self.current_generation()
        hit = self._cache.get(key)
        if hit is not None and (hit[2] is None or hit[2] > self._clock()):
            return hit
        ref = self.container(cgroup_id, cgroup_v1)
        expires: float | None = None
        if ref is None:
            workload, wkey = self.host, self.host_key
            if self.index.path(cgroup_id) is None:
                expires = self._clock() + self._ttl  # not found yet: look again later
        else:
            known = self.resolve(ref.container_id)
            if known is not None:
                workload, wkey = known
            else:
                workload, wkey = self.unknown(ref.container_id)
                expires = self._clock() + self._ttl
                if ref.pod_uid and self.resolver is not None and len(self.pending) < 65536:
                    self.pending[wkey] = ref.container_id
        if len(self._cache) > 65536:
            self._cache.clear()
        entry = (workload, wkey, expires)
        self._cache[key] = entry
        return entry

    def resolve(self, container_id: str) -> tuple[Workload, bytes] | None:
        """(workload, Kafka key) of a container as the resolver names it now, or None."""
        resolved = self.resolver.resolve(container_id) if self.resolver else None
        if resolved is None:
            return None
        if not resolved.container_id:
            resolved = msgspec.structs.replace(resolved, container_id=container_id)
        if not resolved.cluster and self.cluster:
            resolved = msgspec.structs.replace(resolved, cluster=self.cluster)
        return resolved, resolved.key().encode()

    def unknown(self, container_id: str) -> tuple[Workload, bytes]:
        """(workload, Kafka key) of a container no resolver names: its id alone."""
        return (
            Workload(cluster=self.cluster, container_id=container_id),
            f"{self.cluster}/container/{container_id}".encode(),
        )

    def renamed(self, container_id: str) -> None:
        """A container's workload changed (its pod became known): drop the cached answers so every
        consumer asks again (the native consumer follows :attr:`generation`)."""
        for key in [k for k, v in self._cache.items() if v[0].container_id == container_id]:
            del self._cache[key]
        self.generation += 1

    def forget(self, cgroup_id: int) -> None:
        for key in [k for k in self._cache if k[0] == cgroup_id or k[1] == cgroup_id]:
            del self._cache[key]
        self.generation += 1
