"""cgroup path -> container id, the resolver protocol, and the id -> workload cache."""

from __future__ import annotations

import pytest

from schemas.records import Workload
from sensors.containers import (
    ContainerRef,
    StaticWorkloadResolver,
    WorkloadResolver,
    container_from_cgroup,
    normalize_container_id,
)
from sensors.ebpf.cgroups import Attribution, CgroupIndex

CID = "0123456789abcdef" * 4
CID2 = "fedcba9876543210" * 4
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # containerd, systemd cgroup driver (cgroup v2)
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
            ContainerRef(CID, "containerd", UID),
        ),
        # containerd, cgroupfs driver
        (f"/kubepods/besteffort/pod{UID}/{CID}", ContainerRef(CID, "", UID)),
        (f"/kubepods/pod{UID}/{CID}", ContainerRef(CID, "", UID)),
        # containerd with systemd driver as cgroup v1 shows it
        (
            f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
            ContainerRef(CID, "containerd", UID),
        ),
        # CRI-O, both drivers
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
            ContainerRef(CID, "cri-o", UID),
        ),
        (f"/kubepods/burstable/pod{UID}/crio-{CID}", ContainerRef(CID, "cri-o", UID)),
        # docker
        (f"/system.slice/docker-{CID}.scope", ContainerRef(CID, "docker", "")),
        (f"/docker/{CID}", ContainerRef(CID, "docker", "")),
        # podman
        (f"/machine.slice/libpod-{CID}.scope", ContainerRef(CID, "podman", "")),
        # nested: a kind node (docker) running a pod: the innermost id is the container
        (f"/docker/{CID2}/kubepods/besteffort/pod{UID}/{CID}", ContainerRef(CID, "", UID)),
        # a container in a pod inside docker-in-docker: the pod does not leak inward
        (f"/kubepods/pod{UID}/{CID2}/docker/{CID}", ContainerRef(CID, "docker", "")),
    ],
)
def test_container_paths(path: str, expected: ContainerRef) -> None:
    assert container_from_cgroup(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/system.slice/sshd.service",
        "/user.slice/user-0.slice/session-1.scope",
        "/kubepods.slice/kubepods-besteffort.slice",  # a pod's parent, no container
        f"/kubepods/besteffort/pod{UID}",  # the pod cgroup itself (pause is its own container)
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope",  # CRI-O's monitor
        "/process_api/87cbe957ffc0cf0bbcdef0d7f9156921",  # 32 hex: not a container id
    ],
)
def test_host_paths(path: str) -> None:
    assert container_from_cgroup(path) is None


def test_normalize_container_id() -> None:
    for prefix in ("containerd://", "cri-o://", "docker://", ""):
        assert normalize_container_id(prefix + CID) == CID


def test_static_resolver_implements_protocol() -> None:
    wl = Workload(
        namespace="shop", pod="web-1", container="app", workload_kind="Deployment", workload_name="web"
    )
    r = StaticWorkloadResolver({f"containerd://{CID}": wl})
    assert isinstance(r, WorkloadResolver)
    got = r.resolve(CID)
    assert got is not None and got.pod == "web-1" and got.container_id == CID
    assert r.resolve(f"cri-o://{CID}") == got
    assert r.resolve(CID2) is None
    r.remove(CID)
    assert r.resolve(CID) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_index_learns_from_mkdir_and_forgets_after_rmdir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    idx = CgroupIndex(str(tmp_path), clock=clock, forget_after_s=5)
    idx.scan()
    assert idx.on_mkdir(0, 4242, f"/kubepods/pod{UID}/{CID}")
    assert not idx.on_mkdir(3, 7, "/x")  # an untracked v1 hierarchy
    assert idx.path(4242) == f"/kubepods/pod{UID}/{CID}"
    idx.on_rmdir(0, 4242)
    assert idx.path(4242) is not None  # records of its last processes may still come
    clock.now = 10
    idx.expire()
    clock.now = 20  # past the rescan interval: a miss rescans the (empty) tree
    assert idx.path(4242) is None


def test_index_scans_the_tree(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "kubepods" / f"pod{UID}" / CID
    d.mkdir(parents=True)
    idx = CgroupIndex(str(tmp_path))
    idx.scan()
    assert idx.path(d.stat().st_ino) == f"/kubepods/pod{UID}/{CID}"
    assert idx.path(tmp_path.stat().st_ino) == "/"


def test_attribution_caches_and_rechecks_unknown_containers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    idx = CgroupIndex(str(tmp_path), clock=clock)
    idx.on_mkdir(0, 1, "/")
    idx.on_mkdir(0, 10, f"/kubepods/pod{UID}/{CID}")
    resolver = StaticWorkloadResolver()
    attr = Attribution(idx, resolver, cluster="prod", unknown_ttl_s=2, clock=clock)

    host, host_key, _ = attr.lookup(1)
    assert host.is_host and host.cluster == "prod" and host_key == b"prod/host"

    # the pod watcher has not seen the container yet: id only, asked again later
    wl, key, _ = attr.lookup(10)
    assert wl.container_id == CID and not wl.pod and key == f"prod/container/{CID}".encode()
    resolver.add(
        CID, Workload(namespace="shop", pod="web-1", workload_kind="Deployment", workload_name="web")
    )
    assert attr.lookup(10)[0].pod == ""  # still cached
    clock.now = 3
    wl, key, _ = attr.lookup(10)
    assert wl.pod == "web-1" and wl.container_id == CID and wl.cluster == "prod"
    assert key == b"prod/shop/Deployment/web"


def test_attribution_falls_back_to_cgroup_v1(tmp_path) -> None:  # type: ignore[no-untyped-def]
    idx = CgroupIndex(str(tmp_path), str(tmp_path), v1_hierarchy=8)
    idx.on_mkdir(0, 1, "/")
    idx.on_mkdir(8, 99, f"/docker/{CID}")
    attr = Attribution(idx, None, cluster="c")
    wl, _, _ = attr.lookup(1, 99)
    assert wl.container_id == CID
    assert attr.lookup(1, 0)[0].is_host
