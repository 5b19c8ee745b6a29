"""Events in the exact shapes the sensors publish, and the pure stages they flow through.

Stage tests built on hand-made events pass while the live pipeline tells stories wrong: a real eBPF
event has no ``parent_exe`` and no ``exe`` on a file open, its ``exec_id`` is the sensor's base64 of
node, pid and start time, its workload block is whatever the sensor's pod cache knew at that moment
(or a bare container id), an audit event names its *target* object. This module makes events the way
the sensors make them, with the sensors' own code:

- :class:`Node` packs kernel records (``sensors.ebpf.layout``) and decodes them with the sensor's
  :class:`~sensors.ebpf.decode.Decoder`, attributed through its :class:`~sensors.ebpf.cgroups.Attribution`
  over a :class:`~sensors.k8s.cache.PodCache` fed with pod objects in the API server's wire shape
  (kubelet's cgroup layout, containerd ids, owner references, pod IPs);
- :meth:`Node.api` builds an ``audit.k8s.io/v1`` Event as kube-apiserver sends it and normalizes it
  with the audit intake's :func:`~sensors.audit.normalize.normalize` over the intake's cluster-wide cache;
- :class:`Stages` runs enrich → detect → correlate as the worker does, on the wire bytes (every record
  encoded and decoded between stages).
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import decode_alert, decode_events, decode_incident, encode
from schemas.records import Alert, Event, Incident
from schemas.settings import Settings
from sensors.audit.normalize import normalize
from sensors.ebpf import layout
from sensors.ebpf.batch import JsonBatch
from sensors.ebpf.cgroups import Attribution, CgroupIndex
from sensors.ebpf.decode import BootClock, Decoder
from sensors.ebpf.peers import PeerNames
from sensors.ebpf.sensor import attribute
from sensors.k8s.cache import PodCache
from sensors.publisher import encode_event
from streams.correlate import Correlator
from streams.detect import build_detector
from streams.enrich import Enricher

__all__ = ["T0", "TOKEN", "Node", "Pod", "Proc", "S", "Stages", "pod_object"]

S = 1_000_000_000
#: boot-time offset of the simulated node: event times are T0 + seconds since boot
T0 = 1_800_000_000 * S
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class _Clock(BootClock):
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def calibrate(self) -> int:
        return self.offset


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pod_object(
    namespace: str,
    name: str,
    *,
    owner: tuple[str, str] | None = None,
    service_account: str = "default",
    ip: str = "",
    containers: dict[str, str] | None = None,
    container_ids: dict[str, str] | None = None,
    node: str = "node-1",
    host_network: bool = False,
    labels: dict[str, str] | None = None,
    uid: str = "",
) -> dict[str, Any]:
    """A Pod as the API server lists and watches it (``status`` filled as kubelet reports it)."""
    containers = containers or {"app": "registry.example.com/app:1.0"}
    labels = dict(labels or {})
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}")),
        "resourceVersion": "1",
        "labels": labels,
    }
    if owner is not None:
        kind, oname = owner
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": oname, "uid": f"uid-{oname}", "controller": True}
        ]
        if kind == "ReplicaSet":
            labels.setdefault("pod-template-hash", oname.rsplit("-", 1)[-1])
    spec: dict[str, Any] = {
        "containers": [{"name": c, "image": img} for c, img in containers.items()],
        "serviceAccountName": service_account,
        "serviceAccount": service_account,
        "nodeName": node,
    }
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    if container_ids:
        status["containerStatuses"] = [
            {
                "name": c,
                "image": containers.get(c, ""),
                "containerID": f"containerd://{cid}",
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": "2027-01-15T08:00:00Z"}},
            }
            for c, cid in container_ids.items()
        ]
    return {"metadata": meta, "spec": spec, "status": status}


@dataclass
class Pod:
    """A pod of the simulated node: its object, its containers' ids and cgroup ids."""

    namespace: str
    name: str
    obj: dict[str, Any]
    container_ids: dict[str, str]
    cgroups: dict[str, int]
    ip: str = ""
    service_account: str = "default"

    @property
    def user(self) -> str:
        """The API user its service-account token authenticates as."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass
class Proc:
    """A process of the simulated node (host pid, start time in boot ns)."""

    pid: int
    start: int
    cgroup: int
    comm: bytes
    ppid: int = 0
    pstart: int = 0
    uid: int = 0


@dataclass
class Node:
    """One node's sensors: the eBPF decoder with its attribution, and the audit intake."""

    cluster: str = "prod"
    node: str = "node-1"
    #: what the eBPF sensor's pod watch knows (this node's pods)
    node_pods: PodCache = field(init=False)
    #: what the audit intake's pod watch knows (every pod)
    cluster_pods: PodCache = field(init=False)
    mono: float = 0.0

    def __post_init__(self) -> None:
        self.node_pods = PodCache(self.cluster)
        self.cluster_pods = PodCache(self.cluster)
        self.index = CgroupIndex(None, clock=lambda: self.mono)
        self.attribution = Attribution(
            self.index, self.node_pods, cluster=self.cluster, clock=lambda: self.mono
        )
        self.decoder = Decoder(
            self.node,
            _Clock(T0),
            self.attribution.lookup,
            generation=self.attribution.current_generation,
            monotonic=lambda: self.mono,
        )
        #: every item the decoder made: (JSON, Kafka key, time ms, cpu), as the sink gets them
        self.decoded: list[tuple[bytes, bytes, int, int]] = []
        self.peers = PeerNames(self.node_pods.peer_of)
        self._seq = 0
        self._pid = 20_000
        self._next_cgroup = 5_000
        self._audit = 0

    # -- pods ---------------------------------------------------------------------------

    def pod(
        self,
        namespace: str,
        name: str,
        *,
        owner: tuple[str, str] | None = None,
        service_account: str = "default",
        ip: str = "",
        containers: dict[str, str] | None = None,
        host_network: bool = False,
        labels: dict[str, str] | None = None,
        watched: bool = True,
    ) -> Pod:
        """A running pod: its cgroups exist on the node; ``watched`` puts it in the pod watches."""
        containers = containers or {"app": "registry.example.com/app:1.0"}
        cids = {c: _hex(f"{self.cluster}/{namespace}/{name}/{c}") for c in containers}
        obj = pod_object(
            namespace,
            name,
            owner=owner,
            service_account=service_account,
            ip=ip,
            containers=containers,
            container_ids=cids,
            node=self.node,
            host_network=host_network,
            labels=labels,
        )
        uid = obj["metadata"]["uid"]
        cgroups = {}
        for c, cid in cids.items():
            self._next_cgroup += 1
            cgroups[c] = self._next_cgroup
            # kubelet's systemd-driver layout with containerd
            slug = uid.replace("-", "_")
            self.index.v2[self._next_cgroup] = (
                f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{slug}.slice/"
                f"cri-containerd-{cid}.scope"
            )
        pod = Pod(namespace, name, obj, cids, cgroups, ip=ip, service_account=service_account)
        if watched:
            self.watch(pod)
        return pod

    def watch(self, pod: Pod, obj: dict[str, Any] | None = None) -> None:
        """The pod (or a new version of it) reaches both pod watches."""
        if obj is not None:
            pod.obj = obj
        self.node_pods.upsert("Pod", pod.obj)
        self.cluster_pods.upsert("Pod", pod.obj)

    def service(self, namespace: str, name: str, cluster_ip: str, selector: dict[str, str]) -> None:
        """A ClusterIP Service reaches the pod watches."""
        obj = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-svc-{name}",
                "resourceVersion": "1",
            },
            "spec": {
                "selector": selector,
                "clusterIP": cluster_ip,
                "clusterIPs": [cluster_ip],
                "type": "ClusterIP",
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        }
        self.owner("Service", obj)

    def owner(self, kind: str, obj: dict[str, Any]) -> None:
        self.node_pods.upsert(kind, obj)
        self.cluster_pods.upsert(kind, obj)

    # -- processes ----------------------------------------------------------------------

    def _hdr(self, rtype: int, size: int, proc: Proc, at: float) -> tuple[Any, ...]:
        self._seq += 1
        return (
            rtype, size, 0, self._seq, int(at * S), proc.pid, proc.pid, proc.start, proc.ppid, proc.uid,
            proc.pstart, proc.cgroup, 0, 4026532000 + proc.cgroup, 4026533000 + proc.cgroup,
            proc.comm[:15].ljust(16, b"\0"),
        )  # fmt: skip

    def _decode(self, raw: bytes) -> bytes:
        item = self.decoder.decode_json(memoryview(raw), 0, len(raw))
        assert item is not None, "the decoder refused a record"
        self.decoded.append(item)
        # what the sensor does to a drained batch before its sink gets it (no hold here: tests of the
        # hold drive sensors.ebpf.hold themselves)
        (item,) = attribute(JsonBatch.from_items([item]), None, self.peers).items()
        return item[0]

    def process(self, pod: Pod | None, container: str = "app", *, comm: str = "app", at: float = 0.0) -> Proc:
        """A process already running (e.g. the container's entrypoint), without an exec record."""
        self._pid += 1
        cgroup = pod.cgroups[container] if pod is not None else 1
        return Proc(pid=self._pid, start=int(at * S), cgroup=cgroup, comm=comm.encode())

    def exec(
        self,
        parent: Proc,
        exe: str,
        args: list[str],
        *,
        at: float,
        tty: bool = False,
        uid: int = 0,
        pod: Pod | None = None,
        container: str = "app",
    ) -> tuple[Proc, bytes]:
        """``parent`` forks and the child execs ``exe``: (the child, the sensor's process_exec JSON).
        With ``pod``, the child starts in that pod's container (a ``kubectl exec`` session's first
        process, whose parent is runc on the host)."""
        self._pid += 1
        cgroup = pod.cgroups[container] if pod is not None else parent.cgroup
        comm = exe.rsplit("/", 1)[-1].encode()
        child = Proc(
            pid=self._pid, start=int(at * S) - 1000, cgroup=cgroup, comm=comm, ppid=parent.pid,
            pstart=parent.start, uid=uid,
        )  # fmt: skip
        e, cwd, a = exe.encode(), b"/", b"\0".join(x.encode() for x in args) + b"\0"
        size = layout.EXEC.size + len(e) + len(cwd) + len(a)
        flags = layout.EXEC_TTY if tty else 0
        raw = layout.EXEC.pack(
            *self._hdr(layout.T_EXEC, size, child, at), uid, uid, uid, flags, len(e), len(cwd), len(a), 0
        )
        return child, self._decode(raw + e + cwd + a)

    def open(self, proc: Proc, path: str, *, at: float, write: bool = False) -> bytes:
        p = path.encode()
        flags = 0o1101 if write else 0
        raw = layout.OPEN.pack(
            *self._hdr(layout.T_OPEN, layout.OPEN.size + len(p), proc, at),
            flags,
            0o644,
            3,
            len(p),
            0,
            0,
            1,
            2,
            3,
        )
        return self._decode(raw + p)

    def _net(
        self, rtype: int, proc: Proc, local: tuple[str, int], remote: tuple[str, int], at: float
    ) -> bytes:
        saddr = socket.inet_pton(socket.AF_INET, local[0]).ljust(16, b"\0")
        daddr = socket.inet_pton(socket.AF_INET, remote[0]).ljust(16, b"\0")
        raw = layout.NET.pack(
            *self._hdr(rtype, layout.NET.size, proc, at),
            socket.AF_INET,
            6,
            local[1],
            remote[1],
            saddr,
            daddr,
            0,
            4,
        )
        return self._decode(raw)

    def connect(self, proc: Proc, src_ip: str, dst: tuple[str, int], *, at: float) -> bytes:
        return self._net(layout.T_CONNECT, proc, (src_ip, 40_000 + self._seq % 20_000), dst, at)

    def accept(self, proc: Proc, local: tuple[str, int], peer_ip: str, *, at: float) -> bytes:
        return self._net(layout.T_ACCEPT, proc, local, (peer_ip, 50_000 + self._seq % 10_000), at)

    # -- the API server -----------------------------------------------------------------

    def api(
        self,
        user: str,
        verb: str,
        resource: str,
        *,
        at: float,
        namespace: str = "",
        name: str = "",
        subresource: str = "",
        source_ips: list[str] | None = None,
        groups: list[str] | None = None,
        request_object: dict[str, Any] | None = None,
        response_object: dict[str, Any] | None = None,
        code: int = 200,
        query: str = "",
        user_agent: str = "kubectl/v1.31.0 (linux/amd64) kubernetes/abcdef",
        api_group: str = "",
        api_version: str = "v1",
    ) -> bytes:
        """One ``ResponseComplete`` audit event as kube-apiserver's webhook sends it, normalized by the
        audit intake (with its cluster-wide pod cache): the JSON it publishes."""
        self._audit += 1
        audit_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.cluster}/{self._audit}/{user}/{verb}"))
        path = "/api/v1" if not api_group else f"/apis/{api_group}/{api_version}"
        if namespace:
            path += f"/namespaces/{namespace}"
        path += f"/{resource}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        if query:
            path += f"?{query}"
        ts = _rfc3339(T0 + int(at * S))
        sa = user.startswith("system:serviceaccount:")
        raw: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "RequestResponse",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "requestURI": path,
            "verb": verb,
            "user": {
                "username": user,
                "groups": groups
                or (
                    [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{user.split(':')[2]}",
                        "system:authenticated",
                    ]
                    if sa
                    else ["system:authenticated"]
                ),
            },
            "sourceIPs": source_ips or ["192.0.2.10"],
            "userAgent": user_agent,
            "objectRef": {
                k: v
                for k, v in {
                    "resource": resource,
                    "namespace": namespace,
                    "name": name,
                    "subresource": subresource,
                    "apiGroup": api_group,
                    "apiVersion": api_version,
                }.items()
                if v
            },
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": ts,
            "stageTimestamp": ts,
            "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
        }
        if request_object is not None:
            raw["requestObject"] = request_object
        if response_object is not None:
            raw["responseObject"] = response_object
        event = normalize(raw, cluster=self.cluster, node="", pods=self.cluster_pods)
        return encode_event(event)

    def kubectl_exec(
        self, user: str, pod: Pod, command: list[str], *, at: float, container: str = "app"
    ) -> bytes:
        query = "&".join(
            [f"command={c}" for c in command]
            + [f"container={container}", "stdin=true", "stdout=true", "tty=true"]
        )
        return self.api(
            user,
            "create",
            "pods",
            at=at,
            namespace=pod.namespace,
            name=pod.name,
            subresource="exec",
            query=query,
            code=101,
        )


def _rfc3339(ns: int) -> str:
    import datetime

    dt = datetime.datetime.fromtimestamp(ns // S, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % S) // 1000:06d}Z"


class Stages:
    """enrich → detect → correlate as the worker runs them, on wire bytes, without Kafka."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(cluster="prod")
        s = self.settings
        self.enricher = Enricher(cluster=s.cluster, max_record_bytes=s.kafka.max_record_bytes)
        self.detector = build_detector(s.detect, contact_window_s=s.correlate.link_window_s)
        self.correlator = Correlator(settings=s.correlate)
        self.alerts: list[Alert] = []
        self.incidents: dict[str, Incident] = {}
        #: every event as enrich published it on ``cadr.events``
        self.events: list[Event] = []

    def feed(self, values: Iterable[bytes]) -> list[Alert]:
        """Sensor records (as published to ``cadr.raw``) through every stage; the new alerts."""
        result = self.enricher.process(list(values))
        assert not result.dead, [d[1][:300] for d in result.dead]
        new: list[Alert] = []
        for _, record in result.events:
            for event in decode_events(record):
                self.events.append(event)
                for alert in self.detector.process(event):
                    wire = decode_alert(encode(alert))
                    new.append(wire)
        for alert in new:
            self.alerts.append(alert)
            for incident in self.correlator.process_alert(alert, now_ns=alert.time):
                self.incidents[incident.incident_id] = decode_incident(encode(incident))
        return new

    def stories(self) -> list[Incident]:
        """The stories told (latest revisions; a story merged into another is not one of them)."""
        return sorted((i for i in self.incidents.values() if not i.merged_into), key=lambda i: i.first_seen)

    def story_of(self, rule_id: str) -> Incident:
        found = [i for i in self.stories() if any(a.rule_id == rule_id for a in i.alerts)]
        assert len(found) == 1, f"{rule_id} is in {len(found)} stories"
        return found[0]
