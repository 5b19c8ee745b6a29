"""Which container a cgroup path belongs to, and the protocol that names its workload.

Runtimes name each container's cgroup after its id (``<uid>`` is the pod uid, ``<id>`` 64 hex):

* containerd, systemd driver: ``/kubepods.slice/kubepods-besteffort.slice/``
  ``kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``
* containerd, cgroupfs driver: ``/kubepods/besteffort/pod<uid>/<id>``
* containerd with systemd driver as cgroup v1 shows it:
  ``/system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>``
* CRI-O: ``/kubepods.slice/.../crio-<id>.scope`` or ``/kubepods/burstable/pod<uid>/crio-<id>``
  (``crio-conmon-<id>.scope`` is its monitor, not the container)
* docker: ``/system.slice/docker-<id>.scope`` or ``/docker/<id>``; podman: ``libpod-<id>.scope``
* nested (kind, docker-in-docker): ``/docker/<node id>/kubepods/.../<id>``: the innermost id wins

The same paths appear under each cgroup v1 controller on v1 hosts.

The Kubernetes side (``sensors.k8s``) implements :class:`WorkloadResolver` from the pod
watch (``status.containerStatuses[].containerID`` is ``<runtime>://<id>``);
:class:`StaticWorkloadResolver` is the dict-backed one for tests and fixed setups.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

from schemas.records import Workload

__all__ = [
    "ContainerRef",
    "StaticWorkloadResolver",
    "WorkloadResolver",
    "container_from_cgroup",
    "normalize_container_id",
]

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"

# One cgroup path component each; the first that matches (from the leaf up) wins.
_COMPONENT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({_HEX64})\.scope$"), "cri-o"),
    (re.compile(rf"^crio-({_HEX64})$"), "cri-o"),
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^libpod-({_HEX64})\.scope$"), "podman"),
    (re.compile(rf"^.*:cri-containerd:({_HEX64})$"), "containerd"),
    (re.compile(rf"^.*:crio:({_HEX64})$"), "cri-o"),
    (re.compile(rf"^.*:docker:({_HEX64})$"), "docker"),
    (re.compile(rf"^({_HEX64})$"), ""),  # cgroupfs drivers: the bare id
]
# Runtime helpers that live beside a container but are not in it.
_NOT_CONTAINER = re.compile(rf"^(crio-conmon-{_HEX64}\.scope|conmon)$")
_POD_UID = re.compile(rf"pod({_UID})(?:\.slice)?$")
_POD_UID_IN = re.compile(rf"pod({_UID})")
_ANY_ID = re.compile(_HEX64)
_RUNTIME_PREFIXES = ("containerd://", "cri-o://", "docker://", "crio://", "podman://")


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container found in a cgroup path."""

    container_id: str
    #: containerd | cri-o | docker | podman, or "" when the path does not say
    runtime: str = ""
    #: the pod uid from a ``pod<uid>`` component (Kubernetes), else ""
    pod_uid: str = ""


def container_from_cgroup(path: str) -> ContainerRef | None:
    """The container a cgroup path (v1 or v2, relative to its hierarchy root) belongs to,
    or None for a host cgroup."""
    if not path or path == "/":
        return None
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        if _NOT_CONTAINER.match(part):
            return None
        for pattern, runtime in _COMPONENT_PATTERNS:
            m = pattern.match(part)
            if m is None:
                continue
            pod_uid = ""
            same = _POD_UID_IN.search(part[: m.start(1)])  # "...-pod<uid>.slice:cri-containerd:<id>"
            if same:
                pod_uid = same.group(1).replace("_", "-")
            for j in range(i - 1, -1, -1):
                if pod_uid:
                    break
                # the pod uid of *this* container: stop at an outer container's id
                if _ANY_ID.search(parts[j]):
                    break
                pm = _POD_UID.search(parts[j])
                if pm:
                    pod_uid = pm.group(1).replace("_", "-")
                    break
            if not runtime:
                # a bare id: cgroupfs drivers; only docker's own parent names the runtime
                runtime = "docker" if i and parts[i - 1] == "docker" else ""
            return ContainerRef(container_id=m.group(1), runtime=runtime, pod_uid=pod_uid)
    return None


def normalize_container_id(container_id: str) -> str:
    """The bare id of ``containerd://<id>`` / ``cri-o://<id>`` / ``docker://<id>``."""
    for prefix in _RUNTIME_PREFIXES:
        if container_id.startswith(prefix):
            return container_id[len(prefix) :]
    return container_id


@runtime_checkable
class WorkloadResolver(Protocol):
    """Names the workload a container belongs to.

    ``container_id`` is the bare id as found in the cgroup path (no ``runtime://`` prefix).
    Return None when the container is not known (yet): the sensor then reports the
    container id alone and asks again a moment later. Must be cheap (a dict lookup): the
    sensor calls it on its hot path, once per new cgroup and again every few seconds for
    containers still unknown.
    """

    def resolve(self, container_id: str) -> Workload | None: ...


class StaticWorkloadResolver:
    """A :class:`WorkloadResolver` over a fixed mapping (tests, single-host setups).

    Keys may carry a ``runtime://`` prefix; the workload's ``container_id`` is filled in
    when empty.
    """

    def __init__(self, workloads: Mapping[str, Workload] | None = None) -> None:
        self._by_id: dict[str, Workload] = {}
        for cid, wl in (workloads or {}).items():
            self.add(cid, wl)

    def add(self, container_id: str, workload: Workload) -> None:
        cid = normalize_container_id(container_id)
        if not workload.container_id:
            workload = msgspec.structs.replace(workload, container_id=cid)
        self._by_id[cid] = workload

    def remove(self, container_id: str) -> None:
        self._by_id.pop(normalize_container_id(container_id), None)

    def resolve(self, container_id: str) -> Workload | None:
        return self._by_id.get(normalize_container_id(container_id))
