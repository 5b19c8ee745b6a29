"""The two event paths agree: server-side flattening (migration 006) and the typed Python column builder give
identical rows for every kind, default and edge case."""

from __future__ import annotations

import msgspec

from schemas.codec import decode_event, encode
from schemas.records import Audit, Dns, Event, File, Network, Privilege, Process, SensorHealth, Workload
from streams.store.columns import alias_columns, events_table
from streams.store.sink import StoreWriter
from tests.streams.store.support import event, payloads, rows


def _edge_cases() -> list[Event]:
    w = Workload(cluster="c", namespace="ns", pod="p", labels={"app": "x", "ünï": "çødé"})
    return [
        event("net-defaults", kind="net_connect", file=None, network=Network()),
        event(
            "net-full",
            kind="net_accept",
            file=None,
            network=Network(
                protocol="udp",
                family="ipv6",
                src_ip="::1",
                src_port=53,
                dst_ip="fe80::1",
                dst_port=70000,
                direction="ingress",
            ),
        ),
        event("net-missing-block", kind="net_connect", file=None),
        event("dns-default", kind="dns_query", file=None, dns=Dns(query="a.example")),
        event(
            "dns-full",
            kind="dns_query",
            file=None,
            dns=Dns(query="b.example", qtype="AAAA", server_ip="1.1.1.1", answers=["::2", "::3"]),
        ),
        event("priv-default", kind="privilege_change", file=None, privilege=Privilege(op="setuid")),
        event(
            "priv-full",
            kind="privilege_change",
            file=None,
            privilege=Privilege(
                op="capset",
                old_uid=0,
                new_uid=1,
                old_gid=2,
                new_gid=3,
                caps=2**40,
                target_pid=7,
                flags=-1,
                detail="d",
                result=-13,
            ),
        ),
        event("audit-default", kind="k8s_api", file=None, process=None, audit=Audit(audit_id="a1")),
        event(
            "audit-full",
            kind="k8s_api",
            file=None,
            process=None,
            audit=Audit(
                audit_id="a2",
                stage="RequestReceived",
                verb="create",
                user="u",
                groups=["g1", "g2"],
                resource="pods",
                subresource="exec",
                namespace="ns",
                name="p",
                request_uri="/api",
                source_ips=["10.0.0.1"],
                user_agent="kubectl",
                response_code=201,
                decision="allow",
                request={"x": [1, 2]},
            ),
        ),
        event(
            "proc-full",
            kind="process_exit",
            file=None,
            workload=w,
            process=Process(
                pid=2**33,
                ppid=1,
                tid=3,
                uid=0,
                euid=0,
                gid=0,
                egid=0,
                comm="sh",
                exe="/bin/sh",
                args=["sh", "-c", "echo 'x' \"y\" \\ \n"],
                cwd="/",
                exec_id="e",
                parent_exec_id="pe",
                parent_exe="/init",
                start_time=5,
                exit_code=-1,
                tty=True,
                stdio_socket=True,
                cgroup_id=9,
                mnt_ns=10,
                pid_ns=11,
            ),
        ),
        event("file-full", file=File(path="/tmp/ü", flags=577, mode=0o644, write=True, target="/x")),
        event("no-blocks", kind="process_exec", file=None, process=None, workload=Workload()),
        event(
            "health",
            kind="sensor_health",
            file=None,
            process=None,
            source="ebpf",
            health=SensorHealth(sensor="ebpf", events=5, kernel_drops=1),
        ),
        event("old-time", t=1_500_000_000_000_000_000),
    ]


def test_fast_and_typed_paths_give_identical_rows(dsn: str) -> None:
    values = payloads(3000) + [encode(e) for e in _edge_cases()]
    decoded = [decode_event(v) for v in values]
    with StoreWriter(dsn) as writer:
        writer.write_events(values)  # fast path: raw JSON, flattened by the server
        writer.client.command("CREATE TABLE cadr.events_typed AS cadr.events")
        writer.client.insert_arrow("cadr.events_typed", events_table(decoded, values))
        fast = rows(dsn, "SELECT * EXCEPT ingested FROM cadr.events ORDER BY event_id")
        typed = rows(dsn, "SELECT * EXCEPT ingested FROM cadr.events_typed ORDER BY event_id")
    assert len(fast) == len(values)
    columns = [
        r[0] for r in rows(dsn, "SELECT name FROM system.columns WHERE database='cadr' AND table='events'")
    ]
    for f, t in zip(fast, typed, strict=True):
        if f != t:
            diff = {c: (a, b) for c, a, b in zip(columns, f, t, strict=False) if a != b}
            raise AssertionError(f"paths differ for {f[1]}: {diff}")


def test_alias_columns_match_the_typed_defaults(dsn: str) -> None:
    """The columns computed from raw at query time show what the typed record holds (defaults included)."""
    events = sorted(_edge_cases() + [decode_event(v) for v in payloads(300)], key=lambda e: e.event_id)
    expected = alias_columns(events)
    names = list(expected)
    with StoreWriter(dsn) as writer:
        writer.write_events([encode(e) for e in events])
        got = rows(dsn, f"SELECT {', '.join(names)} FROM cadr.events ORDER BY event_id")
    for i, row in enumerate(got):
        for name, value in zip(names, row, strict=True):
            want = expected[name][i]
            if isinstance(want, list) and name == "labels":
                want = dict(want)
            assert value == want, f"{events[i].event_id}.{name}: table {value!r} != record {want!r}"


def test_fast_path_keeps_raw_verbatim(dsn: str) -> None:
    value = encode(event("v"))[:-1] + b',"added_by_a_newer_sensor":{"x":1}}'
    with StoreWriter(dsn) as writer:
        writer.write_events([value])
        assert rows(dsn, "SELECT raw FROM cadr.events") == [(value.decode(),)]
    assert msgspec.json.decode(value)["added_by_a_newer_sensor"] == {"x": 1}
