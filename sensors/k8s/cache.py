"""In-memory pod metadata: pods, their owner chain, containers and IPs, kept by :mod:`sensors.k8s.watcher`.

Objects are stored as the raw JSON dicts the API server sends (deserializing into the client's model
classes would cost ~100x more per watch event). The cache answers:

- :meth:`PodCache.resolve` ``(container_id) -> Workload`` for the eBPF sensor (cgroup -> container id ->
  pod), satisfying ``sensors.containers.WorkloadResolver``;
- :meth:`PodCache.by_ip` / :meth:`PodCache.peer_of` for connections between pods, by pod IP or by a
  Service's cluster IP (the workload of the pods its selector picks);
- :meth:`PodCache.by_pod` for audit events about a pod (``kubectl exec`` targets);
- :meth:`PodCache.actor_of` for the workload that made an API call (its source IP is a pod's, or the
  service account's token belongs to the pods of one workload).

The workload of a pod is the top of its controller chain: Pod -> ReplicaSet -> Deployment,
Pod -> Job -> CronJob, Pod -> StatefulSet / DaemonSet. ReplicaSets and Jobs come from their own watches;
when one is not (yet) known the chain stops at what is known, except for Deployment-made ReplicaSets,
which carry the ``pod-template-hash`` label and name the Deployment by prefix.
Thread-safe: watch threads write, the event loop reads. :attr:`PodCache.version` changes whenever an
answer may have changed (a pod's containers, IP, labels or owner; a Service), so callers that cache
answers (the eBPF sensor's attribution) know to ask again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from schemas.records import Workload

__all__ = ["PodCache", "PodInfo", "ServiceInfo", "strip_runtime"]

_MAX_CHAIN = 8  # owner references cannot loop in a sane cluster; bound it anyway


def strip_runtime(container_id: str) -> str:
    """``containerd://abc`` / ``docker://abc`` / ``cri-o://abc`` -> ``abc``."""
    _, sep, rest = container_id.partition("://")
    return rest if sep else container_id


@dataclass(frozen=True)
class PodInfo:
    """What the cache derived from one pod object."""

    namespace: str
    name: str
    uid: str
    node: str
    service_account: str
    workload_kind: str
    workload_name: str
    labels: dict[str, str]
    pod_ips: tuple[str, ...]
    host_network: bool
    #: container name -> (container id, image)
    containers: dict[str, tuple[str, str]] = field(default_factory=dict)
    owner_chain: tuple[tuple[str, str], ...] = ()

    def workload(self, cluster: str = "", container: str = "") -> Workload:
        cid, image = self.containers.get(container, ("", ""))
        if not container and self.containers:
            image = next(iter(self.containers.values()))[1]
        return Workload(
            cluster=cluster,
            namespace=self.namespace,
            pod=self.name,
            container=container,
            container_id=cid,
            workload_kind=self.workload_kind,
            workload_name=self.workload_name,
            image=image,
            service_account=self.service_account,
            pod_ip=self.pod_ips[0] if self.pod_ips and not self.host_network else "",
            labels=dict(self.labels),
        )


@dataclass(frozen=True)
class ServiceInfo:
    """A Service's cluster IPs and pod selector."""

    namespace: str
    name: str
    cluster_ips: tuple[str, ...]
    selector: tuple[tuple[str, str], ...]


def _service_info(obj: dict[str, Any]) -> ServiceInfo:
    meta = _meta(obj)
    spec: dict[str, Any] = obj["spec"] if isinstance(obj.get("spec"), dict) else {}
    ips = [str(ip) for ip in spec.get("clusterIPs") or [] if ip and ip != "None"]
    if not ips and spec.get("clusterIP") and spec.get("clusterIP") != "None":
        ips = [str(spec["clusterIP"])]
    raw_selector = spec.get("selector")
    selector: dict[str, Any] = raw_selector if isinstance(raw_selector, dict) else {}
    return ServiceInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        cluster_ips=tuple(ips),
        selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
    )


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _controller(obj: dict[str, Any]) -> tuple[str, str] | None:
    owners = [o for o in _meta(obj).get("ownerReferences") or [] if isinstance(o, dict)]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner is None:
        return None
    return str(owner.get("kind", "")), str(owner.get("name", ""))


class PodCache:
    """Pods plus the ReplicaSets and Jobs needed to walk owner chains."""

    def __init__(self, cluster: str = "") -> None:
        self.cluster = cluster
        self._lock = threading.RLock()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._owners: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name) -> object
        self._info: dict[tuple[str, str], PodInfo] = {}
        self._by_container: dict[str, tuple[tuple[str, str], str]] = {}  # id -> (pod key, container name)
        self._by_ip: dict[str, tuple[str, str]] = {}
        self._by_sa: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (ns, service account) -> pods
        self._services: dict[tuple[str, str], ServiceInfo] = {}
        self._by_service_ip: dict[str, tuple[str, str]] = {}
        self._peers: dict[str, str] = {}  # ip -> peer key, for this version
        #: bumped when an answer may have changed (see the module doc)
        self.version = 0

    # -- writes (watch threads) -----------------------------------------------------------------

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        """Add or replace one object (kind ``Pod``, ``ReplicaSet``, ``Job`` or ``Service``)."""
        meta = _meta(obj)
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if kind == "Pod":
                before = self._info.get(key)
                self._drop_pod_index(key)
                self._pods[key] = obj
                self._index_pod(key)
                if self._info.get(key) != before:
                    self._changed()
            elif kind == "Service":
                self._drop_service(key)
                info = _service_info(obj)
                self._services[key] = info
                for ip in info.cluster_ips:
                    self._by_service_ip[ip] = key
                self._changed()
            else:
                self._owners[(kind, *key)] = obj
                self._reindex_owned(key[0], (kind, key[1]))

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if kind == "Pod":
                self._drop_pod_index(key)
                self._pods.pop(key, None)
            elif kind == "Service":
                self._drop_service(key)
            else:
                self._owners.pop((kind, *key), None)
            self._changed()

    def replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        """Replace every object of ``kind`` with a fresh list (after a LIST or a relist on 410 Gone)."""
        with self._lock:
            self._changed()
            if kind == "Service":
                for key in list(self._services):
                    self._drop_service(key)
                for obj in items:
                    self.upsert("Service", obj)
                return
            if kind == "Pod":
                for key in list(self._pods):
                    self._drop_pod_index(key)
                self._pods.clear()
                for obj in items:
                    meta = _meta(obj)
                    self._pods[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = obj
                for key in self._pods:
                    self._index_pod(key)
            else:
                for k in [k for k in self._owners if k[0] == kind]:
                    del self._owners[k]
                for obj in items:
                    meta = _meta(obj)
                    self._owners[(kind, str(meta.get("namespace", "")), str(meta.get("name", "")))] = obj
                for ns in {k[0] for k in self._pods}:
                    self._reindex_owned(ns)

    # -- indexes -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        self._peers.clear()

    def _drop_service(self, key: tuple[str, str]) -> None:
        info = self._services.pop(key, None)
        if info is None:
            return
        for ip in info.cluster_ips:
            if self._by_service_ip.get(ip) == key:
                del self._by_service_ip[ip]

    def _drop_pod_index(self, key: tuple[str, str]) -> None:
        info = self._info.pop(key, None)
        if info is None:
            return
        for cid, _ in info.containers.values():
            if cid and self._by_container.get(cid, (None,))[0] == key:
                del self._by_container[cid]
        for ip in info.pod_ips:
            if self._by_ip.get(ip) == key:
                del self._by_ip[ip]
        pods = self._by_sa.get((info.namespace, info.service_account))
        if pods is not None:
            pods.discard(key)
            if not pods:
                del self._by_sa[(info.namespace, info.service_account)]

    def _index_pod(self, key: tuple[str, str]) -> None:
        info = self._derive(self._pods[key])
        self._info[key] = info
        for cname, (cid, _) in info.containers.items():
            if cid:
                self._by_container[cid] = (key, cname)
        if not info.host_network:  # host-network pods share the node's IP: not a pod identity
            for ip in info.pod_ips:
                self._by_ip[ip] = key
        self._by_sa.setdefault((info.namespace, info.service_account), set()).add(key)

    def _reindex_owned(self, namespace: str, owner: tuple[str, str] | None = None) -> None:
        # An owner arrived or changed: recompute the workload of the pods whose chain passes through it.
        for key in [k for k in self._pods if k[0] == namespace]:
            info = self._info.get(key)
            if owner is not None and info is not None and owner not in info.owner_chain:
                continue
            before = self._info.get(key)
            self._drop_pod_index(key)
            self._index_pod(key)
            if self._info.get(key) != before:
                self._changed()

    def _chain(self, namespace: str, pod: dict[str, Any]) -> list[tuple[str, str]]:
        chain: list[tuple[str, str]] = []
        current = _controller(pod)
        labels = _meta(pod).get("labels") or {}
        while current is not None and len(chain) < _MAX_CHAIN:
            chain.append(current)
            kind, name = current
            owner = self._owners.get((kind, namespace, name))
            if owner is not None:
                current = _controller(owner)
                continue
            if kind == "ReplicaSet" and "pod-template-hash" in labels and "-" in name:
                # unseen ReplicaSet made by a Deployment: the name is <deployment>-<hash>
                current = ("Deployment", name.rsplit("-", 1)[0])
                chain.append(current)
            break
        return chain

    def _derive(self, pod: dict[str, Any]) -> PodInfo:
        meta = _meta(pod)
        spec: dict[str, Any] = pod["spec"] if isinstance(pod.get("spec"), dict) else {}
        status: dict[str, Any] = pod["status"] if isinstance(pod.get("status"), dict) else {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        images: dict[str, str] = {}
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for c in spec.get(key) or []:
                if isinstance(c, dict):
                    images[str(c.get("name", ""))] = str(c.get("image", ""))
        containers: dict[str, tuple[str, str]] = {n: ("", img) for n, img in images.items()}
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or []:
                if isinstance(cs, dict):
                    cname = str(cs.get("name", ""))
                    cid = strip_runtime(str(cs.get("containerID") or ""))
                    containers[cname] = (cid, images.get(cname) or str(cs.get("image", "")))
        ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
        if not ips and status.get("podIP"):
            ips = [str(status["podIP"])]
        chain = self._chain(namespace, pod)
        top_kind, top_name = chain[-1] if chain else ("", "")
        labels: dict[str, Any] = meta["labels"] if isinstance(meta.get("labels"), dict) else {}
        return PodInfo(
            namespace=namespace,
            name=name,
            uid=str(meta.get("uid", "")),
            node=str(spec.get("nodeName", "")),
            service_account=str(spec.get("serviceAccountName") or spec.get("serviceAccount") or ""),
            workload_kind=top_kind or "Pod",
            workload_name=top_name or name,
            labels={str(k): str(v) for k, v in labels.items()},
            pod_ips=tuple(ips),
            host_network=spec.get("hostNetwork") is True,
            containers=containers,
            owner_chain=tuple(chain),
        )

    # -- reads ---------------------------------------------------------------------------------

    def resolve(self, container_id: str) -> Workload | None:
        """The workload a container belongs to (full id, runtime prefix optional)."""
        cid = strip_runtime(container_id)
        with self._lock:
            hit = self._by_container.get(cid)
            if hit is None:
                return None
            key, cname = hit
            return self._info[key].workload(self.cluster, cname)

    def by_ip(self, ip: str) -> Workload | None:
        with self._lock:
            key = self._by_ip.get(ip)
            return self._info[key].workload(self.cluster) if key is not None else None

    def peer_of(self, ip: str) -> str:
        """The workload key behind an address: a pod's own IP, or a Service's cluster IP (the one
        workload its selector picks among the pods known here; the Service's own key
        ``<cluster>/<ns>/Service/<name>`` when that is none or several). "" when unknown."""
        with self._lock:
            found = self._peers.get(ip)
            if found is not None:
                return found
            key = self._by_ip.get(ip)
            if key is not None:
                found = self._info[key].workload(self.cluster).key()
            else:
                skey = self._by_service_ip.get(ip)
                found = self._service_workload(self._services[skey]) if skey is not None else ""
            if len(self._peers) < 65536:
                self._peers[ip] = found
            return found

    def _service_workload(self, svc: ServiceInfo) -> str:
        keys: set[str] = set()
        if svc.selector:
            for (ns, _), info in self._info.items():
                if ns == svc.namespace and all(info.labels.get(k) == v for k, v in svc.selector):
                    keys.add(info.workload(self.cluster).key())
        if len(keys) == 1:
            return keys.pop()
        return f"{self.cluster}/{svc.namespace}/Service/{svc.name}"

    def actor_of(self, user: str, source_ips: list[str]) -> Workload | None:
        """The workload that made an API call: the pod whose IP the call came from; else, for a service
        account, the workload whose pods run as it when they are all of one workload (no pod named:
        the token may be used from anywhere). None when neither says."""
        with self._lock:
            for ip in source_ips:
                key = self._by_ip.get(ip)
                if key is not None:
                    return self._info[key].workload(self.cluster)
            prefix = "system:serviceaccount:"
            if not user.startswith(prefix):
                return None
            namespace, _, name = user[len(prefix) :].partition(":")
            infos = [self._info[k] for k in self._by_sa.get((namespace, name), ()) if k in self._info]
            kinds = {(i.workload_kind, i.workload_name) for i in infos}
            if len(kinds) != 1:
                return None
            (kind, wname), info = kinds.pop(), infos[0]
            return Workload(
                cluster=self.cluster,
                namespace=namespace,
                workload_kind=kind,
                workload_name=wname,
                service_account=name,
                labels=dict(info.labels) if len(infos) == 1 else {},
            )

    def by_pod(self, namespace: str, name: str, container: str = "") -> Workload | None:
        """The pod's workload; with ``container``, that container's id and image too."""
        with self._lock:
            info = self._info.get((namespace, name))
            return info.workload(self.cluster, container) if info is not None else None

    def pod_info(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return self._info.get((namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)
