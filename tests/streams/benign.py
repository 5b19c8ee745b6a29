"""Benign activity for tests: :func:`benign_events`, one nginx container serving its page (no rule
fires), and :class:`BenignCluster`, a simulated benign cluster for baseline tests: what real workloads emit, with their normal
variation (new pod names, container ids, PIDs and pod IPs on every start, rotated temp files,
rotating public addresses behind one DNS name, scaled replicas, restarts).

Events look like the eBPF sensor's after enrich: reads pass the sensor's in-kernel "first open
per container and file" filter, so a container reports each file it reads once; writes are all
reported.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas.records import Dns, Event, EventKind, File, Network, Privilege, Process, Source, Workload

__all__ = ["BenignCluster", "Container", "benign_events"]

SEC = 10**9
_POD_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_TMP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"


@dataclass
class Container:
    """One running container of a pod, with the sensor's per-container open filter."""

    app: str
    workload: Workload
    pid: int
    opened: set[str] = field(default_factory=set)
    exec_seq: int = 0


class BenignCluster:
    """Generates the events of a few benign workloads over a span of event time.

    ``web``: an nginx Deployment (entrypoint scripts render config into /etc, privilege drop to
    101, listens on 80, serves pages, buffers bodies in numbered temp files, calls an API service).
    ``worker``: a Python queue worker (temp files with random names, ImageMagick and gzip on them,
    its service-account token, Redis through a peer that enrich may or may not know yet, a
    public payments API behind a DNS name whose addresses rotate).
    ``legacy``: a Deployment already running when learning starts (its profile ends partial),
    whose container restarts later.
    """

    def __init__(self, seed: int = 7, cluster: str = "test") -> None:
        self.rng = random.Random(seed)
        self.cluster = cluster
        self._ids = itertools.count(1)
        self._pids = itertools.count(100)
        self._ips = itertools.count(10)
        self.containers: list[Container] = []
        # the payments API rotates through a pool of public addresses; later phases use new ones
        self.api_pool = ["54.187.216.72", "54.187.174.169", "54.187.205.235", "54.241.31.99"]

    # -- identities --

    def _pod_name(self, app: str) -> str:
        suffix = "".join(self.rng.choice(_POD_ALPHABET) for _ in range(5))
        return f"{app}-7d9f8c6b5d-{suffix}"

    def _workload(self, app: str, container: str, pod: str | None = None) -> Workload:
        n = next(self._ips)
        return Workload(
            cluster=self.cluster,
            namespace="shop",
            pod=pod or self._pod_name(app),
            container=container,
            container_id=f"{self.rng.getrandbits(64):016x}{n:08x}",
            workload_kind="Deployment",
            workload_name=app,
            image=f"registry.example/{app}:1.4.2",
            pod_ip=f"10.244.{n // 250}.{n % 250 + 2}",
        )

    def _tmp(self) -> str:
        return "tmp" + "".join(self.rng.choice(_TMP_ALPHABET) for _ in range(8))

    # -- event builders --

    def _event(self, c: Container, t: int, kind: EventKind, **blocks: object) -> Event:
        return Event(
            event_id=f"ev-{next(self._ids)}",
            time=t,
            node="node-1",
            source=Source.EBPF,
            kind=kind,
            workload=c.workload,
            enriched=True,
            **blocks,  # type: ignore[arg-type]
        )

    def _proc(self, c: Container, exe: str = "", args: list[str] | None = None, pid: int = 0) -> Process:
        return Process(
            pid=pid or c.pid, exe=exe, args=args or [], uid=0, exec_id=f"{c.workload.container_id}:{pid}"
        )

    def exec(self, c: Container, t: int, exe: str, args: list[str], parent: str = "") -> Event:
        pid = next(self._pids)
        proc = Process(
            pid=pid,
            ppid=c.pid,
            exe=exe,
            args=args,
            uid=0,
            exec_id=f"{c.workload.container_id}:{pid}",
            parent_exe=parent,
        )
        return self._event(c, t, EventKind.PROCESS_EXEC, process=proc)

    def open(self, c: Container, t: int, path: str, write: bool = False, exe: str = "") -> Event | None:
        """A file open as the sensor reports it: a read only the first time the container opens
        the file, a write every time."""
        if not write:
            if path in c.opened:
                return None
            c.opened.add(path)
        f = File(path=path, flags=577 if write else 0, write=write)
        return self._event(c, t, EventKind.FILE_OPEN, process=self._proc(c, exe), file=f)

    def connect(self, c: Container, t: int, ip: str, port: int, peer: str = "", exe: str = "") -> Event:
        net = Network(
            src_ip=c.workload.pod_ip,
            src_port=self.rng.randint(32768, 60999),
            dst_ip=ip,
            dst_port=port,
            peer_workload=peer,
        )
        return self._event(c, t, EventKind.NET_CONNECT, process=self._proc(c, exe), network=net)

    def dns(self, c: Container, t: int, name: str, answers: list[str], exe: str = "") -> Event:
        return self._event(
            c, t, EventKind.DNS_QUERY, process=self._proc(c, exe), dns=Dns(query=name, answers=answers)
        )

    def listen(self, c: Container, t: int, port: int, exe: str = "") -> Event:
        net = Network(src_ip="0.0.0.0", src_port=port, direction="listen")
        return self._event(c, t, EventKind.NET_LISTEN, process=self._proc(c, exe), network=net)

    def accept(self, c: Container, t: int, port: int, exe: str = "") -> Event:
        net = Network(
            src_ip=c.workload.pod_ip,
            src_port=port,
            dst_ip="10.244.0.1",
            dst_port=self.rng.randint(32768, 60999),
            direction="ingress",
        )
        return self._event(c, t, EventKind.NET_ACCEPT, process=self._proc(c, exe), network=net)

    def setid(self, c: Container, t: int, op: str, new: int, exe: str) -> Event:
        priv = Privilege(
            op=op, old_uid=0, new_uid=new if "uid" in op else -1, new_gid=new if "gid" in op else -1
        )
        return self._event(c, t, EventKind.PRIVILEGE_CHANGE, process=self._proc(c, exe), privilege=priv)

    # -- workloads --

    def start(self, app: str, t: int, pod: str | None = None) -> tuple[Container, list[Event]]:
        """A container of ``app`` starting at ``t`` (its start-up events)."""
        container = {"web": "nginx", "worker": "worker", "legacy": "app"}[app]
        c = Container(app=app, workload=self._workload(app, container, pod), pid=next(self._pids))
        self.containers.append(c)
        step = itertools.count()

        def at() -> int:
            return t + next(step) * SEC // 10

        evs: list[Event | None] = []
        if app == "web":
            evs.append(
                self.exec(
                    c, at(), "/docker-entrypoint.sh", ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
                )
            )
            evs.append(
                self.exec(
                    c,
                    at(),
                    "/usr/bin/find",
                    [
                        "find",
                        "/docker-entrypoint.d/",
                        "-mindepth",
                        "1",
                        "-maxdepth",
                        "1",
                        "-type",
                        "f",
                        "-print",
                        "-quit",
                    ],
                )
            )
            evs.append(
                self.exec(c, at(), "/bin/sh", ["/bin/sh", "/docker-entrypoint.d/20-envsubst-on-templates.sh"])
            )
            evs.append(self.exec(c, at(), "/usr/bin/envsubst", ["envsubst", "${NGINX_PORT} ${API_HOST}"]))
            evs.append(
                self.open(c, at(), "/etc/nginx/templates/default.conf.template", exe="/usr/bin/envsubst")
            )
            evs.append(
                self.open(c, at(), "/etc/nginx/conf.d/default.conf", write=True, exe="/usr/bin/envsubst")
            )
            evs.append(self.exec(c, at(), "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"]))
            for path in (
                "/etc/ld.so.cache",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
                "/etc/nginx/nginx.conf",
                "/etc/nginx/mime.types",
                "/etc/nginx/conf.d/default.conf",
                "/etc/passwd",
                "/etc/group",
            ):
                evs.append(self.open(c, at(), path, exe="/usr/sbin/nginx"))
            for path in ("/var/log/nginx/access.log", "/var/log/nginx/error.log", "/run/nginx.pid"):
                evs.append(self.open(c, at(), path, write=True, exe="/usr/sbin/nginx"))
            evs.append(self.listen(c, at(), 80, exe="/usr/sbin/nginx"))
            for _ in range(2):  # two worker processes drop privileges
                evs.append(self.setid(c, at(), "setgid", 101, "/usr/sbin/nginx"))
                evs.append(self.setid(c, at(), "setuid", 101, "/usr/sbin/nginx"))
        elif app == "worker":
            py = "/usr/local/bin/python3.12"
            evs.append(
                self.exec(
                    c,
                    at(),
                    py,
                    [
                        "python3",
                        "-m",
                        "worker",
                        "--queue",
                        "jobs",
                        "--concurrency",
                        str(self.rng.choice([4, 8])),
                    ],
                )
            )
            for path in (
                "/usr/local/lib/python3.12/os.py",
                "/usr/local/lib/python3.12/json/__init__.py",
                "/usr/local/lib/python3.12/site-packages/redis/__init__.py",
                "/app/worker/__init__.py",
                "/app/worker/__main__.py",
                "/app/config.yaml",
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/resolv.conf",
                "/etc/hosts",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                f"/proc/{c.pid}/status",
            ):
                evs.append(self.open(c, at(), path, exe=py))
            evs.append(self.open(c, at(), f"/var/log/app/worker-{c.workload.pod}.log", write=True, exe=py))
            evs.append(self.dns(c, at(), "redis.data.svc.cluster.local", ["10.96.40.12"], exe=py))
            evs.append(self.connect(c, at(), "10.96.40.12", 6379, exe=py))
        else:  # legacy
            evs.append(self.exec(c, at(), "/opt/legacy/bin/start.sh", ["/opt/legacy/bin/start.sh"]))
            evs.append(
                self.exec(
                    c,
                    at(),
                    "/opt/legacy/bin/server",
                    ["server", "--config", "/opt/legacy/etc/server.conf", "--port", "9000"],
                    parent="/bin/sh",
                )
            )
            evs.append(self.open(c, at(), "/opt/legacy/etc/server.conf", exe="/opt/legacy/bin/server"))
            evs.append(
                self.open(c, at(), "/etc/legacy/license.key", write=True, exe="/opt/legacy/bin/server")
            )
            evs.append(self.setid(c, at(), "setuid", 1000, "/opt/legacy/bin/server"))
            evs.append(self.listen(c, at(), 9000, exe="/opt/legacy/bin/server"))
        return c, [e for e in evs if e is not None]

    def running(self, app: str) -> Container:
        """A container of ``app`` that was already running before anything was observed."""
        container = {"web": "nginx", "worker": "worker", "legacy": "app"}[app]
        c = Container(app=app, workload=self._workload(app, container), pid=next(self._pids))
        self.containers.append(c)
        return c

    def stop(self, c: Container) -> None:
        self.containers.remove(c)

    def activity(self, c: Container, t: int) -> Iterator[Event]:
        """One minute of ``c``'s steady-state work starting at ``t``."""
        rng = self.rng
        if c.app == "web":
            for i in range(rng.randint(1, 4)):
                yield self.accept(c, t + i * SEC, 80, exe="/usr/sbin/nginx")
                page = (
                    f"/usr/share/nginx/html/{rng.choice(['index', 'about', 'pricing', 'docs', 'blog'])}.html"
                )
                e = self.open(c, t + i * SEC, page, exe="/usr/sbin/nginx")
                if e is not None:
                    yield e
            if rng.random() < 0.3:
                # request bodies buffered to numbered temp files
                body = f"/var/cache/nginx/client_temp/{rng.randint(1, 10**10):010d}"
                e = self.open(c, t + 5 * SEC, body, write=True, exe="/usr/sbin/nginx")
                if e is not None:
                    yield e
                yield self.connect(c, t + 6 * SEC, "10.96.12.34", 8080, exe="/usr/sbin/nginx")
        elif c.app == "worker":
            py = "/usr/local/bin/python3.12"
            if rng.random() < 0.5:
                src, dst = f"/tmp/{self._tmp()}.png", f"/tmp/{self._tmp()}.jpg"
                for e in (self.open(c, t, src, write=True, exe=py), self.open(c, t + SEC, src, exe=py)):
                    if e is not None:
                        yield e
                size = f"{rng.choice([640, 800, 1024])}x{rng.choice([480, 600, 768])}"
                yield self.exec(
                    c, t + 2 * SEC, "/usr/bin/convert", ["convert", src, "-resize", size, dst], parent=py
                )
                yield self.exec(c, t + 3 * SEC, "/bin/sh", ["/bin/sh", "-c", f"gzip -9 {dst}"], parent=py)
                yield self.exec(c, t + 3 * SEC, "/bin/gzip", ["gzip", "-9", dst], parent="/bin/sh")
                e = self.open(c, t + 4 * SEC, f"/proc/{next(self._pids)}/status", exe=py)
                if e is not None:
                    yield e
            if rng.random() < 0.4:
                # the payments API: a fresh lookup, then a connection to one of its addresses
                answers = rng.sample(self.api_pool, 2)
                yield self.dns(c, t + 10 * SEC, "api.payments-example.com", answers, exe=py)
                yield self.connect(c, t + 11 * SEC, answers[0], 443, exe=py)
            # Redis: enrich names the peer once it has seen the Redis pod's own events
            peer = f"{self.cluster}/data/StatefulSet/redis" if rng.random() < 0.7 else ""
            ip = f"10.244.9.{rng.randint(2, 4)}" if peer else "10.96.40.12"
            yield self.connect(c, t + 20 * SEC, ip, 6379, peer=peer, exe=py)
        else:  # legacy
            e = self.open(
                c,
                t,
                f"/opt/legacy/data/{rng.choice(['a', 'b', 'c', 'd'])}.db",
                write=True,
                exe="/opt/legacy/bin/server",
            )
            if e is not None:
                yield e
            yield self.accept(c, t + SEC, 9000, exe="/opt/legacy/bin/server")
            yield self.connect(c, t + 2 * SEC, "10.96.7.7", 5432, exe="/opt/legacy/bin/server")
            # kubelet exec probe: runc exec of a shell command
            yield self.exec(c, t + 3 * SEC, "/bin/sh", ["/bin/sh", "-c", "pg_isready -h db -p 5432"])


def benign_events(*, start_ns: int, count: int, cluster: str = "local", node: str = "node-1") -> list[Event]:
    """Routine container activity (nginx serving, reading its config): no rule should fire."""
    out = []
    wl = Workload(
        cluster=cluster,
        namespace="web",
        pod="web-5c6d-x1",
        container="nginx",
        container_id="c" * 64,
        workload_kind="Deployment",
        workload_name="web",
        image="nginx:1.27",
    )
    for i in range(count):
        out.append(
            Event(
                event_id=f"benign-{start_ns}-{i}",
                time=start_ns + i * 1000,
                node=node,
                source=Source.EBPF,
                kind=EventKind.FILE_OPEN,
                workload=wl,
                process=Process(pid=7, exe="/usr/sbin/nginx", exec_id="nginx-7", comm="nginx"),
                file=File(path="/usr/share/nginx/html/index.html"),
            )
        )
    return out
