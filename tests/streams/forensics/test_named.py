"""Named forensic queries: definitions, typed binding, each hunt on a synthetic attack, injection is inert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from cadr.commands.query import run_query
from schemas.codec import encode
from schemas.records import Incident, Severity, TimelineEntry, Workload
from schemas.settings import Settings
from streams.forensics.named import NamedQueryError, bind_params, load_named_queries, parse_time_ns
from streams.store.sink import StoreWriter
from tests.streams.forensics.synth import ATTACK
from tests.streams.store.support import payloads

NAMED = {
    "process_tree",
    "pod_activity",
    "exec_sessions",
    "service_account_calls",
    "connections_to",
    "first_seen_executables",
    "incident_window",
}
ALL_TIME = {"since": "1970-01-01", "until": "2100-01-01"}


def test_every_named_query_loads_and_declares_what_it_uses() -> None:
    queries = load_named_queries()
    assert set(queries) == NAMED
    for q in queries.values():
        assert q.summary and "{db:Identifier}" in q.sql


def test_binding_is_typed() -> None:
    q = load_named_queries()["pod_activity"]
    now = 1_790_000_000 * 10**9
    bound = bind_params(q, {"namespace": "ns", "pod": "p", "since": "-2h"}, now_ns=now)
    assert bound["db"] == "cadr" and bound["limit"] == 10000
    assert bound["since"] == "2026-09-21 12:13:20.000000000"
    with pytest.raises(NamedQueryError, match="not an integer"):
        bind_params(q, {"namespace": "ns", "pod": "p", "limit": "10; DROP TABLE events"})
    with pytest.raises(NamedQueryError, match="out of range"):
        bind_params(q, {"namespace": "ns", "pod": "p", "limit": "-1"})
    with pytest.raises(NamedQueryError, match="needs --param pod"):
        bind_params(q, {"namespace": "ns"})
    with pytest.raises(NamedQueryError, match="no parameter"):
        bind_params(q, {"namespace": "ns", "pod": "p", "db": "system"})
    with pytest.raises(NamedQueryError, match="not a time"):
        bind_params(q, {"namespace": "ns", "pod": "p", "since": "yesterday'--"})


def test_time_parsing() -> None:
    now = 2_000_000_000 * 10**9
    assert parse_time_ns("now", now) == now
    assert parse_time_ns("-90m", now) == now - 5400 * 10**9
    assert parse_time_ns("now-1d", now) == now - 86400 * 10**9
    assert parse_time_ns("1790000000") == 1_790_000_000 * 10**9
    assert parse_time_ns("2026-09-21T14:13:20Z") == 1_790_000_000 * 10**9
    assert parse_time_ns("2026-09-21 16:13:20+02:00") == 1_790_000_000 * 10**9


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings()
    settings.data_dir = str(tmp_path_factory.mktemp("named"))
    incident = Incident(
        incident_id="inc-attack",
        revision=2,
        severity=Severity.HIGH,
        title="shell in shop-api",
        summary="s",
        first_seen=0,
        last_seen=0,
        workloads=[Workload(namespace=ATTACK.namespace, workload_name=ATTACK.workload)],
        timeline=[
            TimelineEntry(
                time=0, event_id="attack-2", kind="process_exec", text="bash", node_id="attack-shell"
            )
        ],
    )
    values = payloads(4000)
    times = {orjson.loads(v)["event_id"]: orjson.loads(v)["time"] for v in values}
    incident.first_seen = times["attack-1"]
    incident.last_seen = times["attack-8"]
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events(values)
        writer.write_records("incidents", [encode(incident)])
    return settings


def _named(settings: Settings, name: str, **params: Any) -> list[dict[str, Any]]:
    out = run_query(settings, None, named=name, params={k: str(v) for k, v in params.items()}, fmt="jsonl")
    return [orjson.loads(line) for line in out.splitlines()]


def test_process_tree_of_an_incident(store: Settings) -> None:
    rows = _named(store, "process_tree", incident="inc-attack")
    by_id = {r["exec_id"]: r for r in rows}
    assert by_id["attack-shell"]["depth"] == 0 and by_id["attack-shell"]["tty"] is True
    assert by_id["attack-cat"]["depth"] == 1 and by_id["attack-curl"]["depth"] == 1
    root = next(r for r in rows if r["depth"] == -1)
    assert root["parent_exec_id"] == "" and root["pid"] == 1
    assert _named(store, "process_tree", exec_id="attack-curl")[-1]["exec_id"] == "attack-curl"


def test_pod_activity(store: Settings) -> None:
    shell = _named(store, "process_tree", exec_id="attack-shell")
    pod = next(r["pod"] for r in shell if r["exec_id"] == "attack-shell")
    rows = _named(store, "pod_activity", namespace=ATTACK.namespace, pod=pod, **ALL_TIME)
    ids = [r["event_id"] for r in rows]
    assert {"attack-2", "attack-3", "attack-4", "attack-7"} <= set(ids)
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)


def test_exec_sessions(store: Settings) -> None:
    rows = _named(store, "exec_sessions", **ALL_TIME)
    assert [(r["user"], r["action"], r["namespace"]) for r in rows] == [
        (ATTACK.user, "exec", ATTACK.namespace)
    ]


def test_service_account_calls(store: Settings) -> None:
    rows = _named(
        store,
        "service_account_calls",
        namespace=ATTACK.namespace,
        service_account=f"{ATTACK.workload}-sa",
        **ALL_TIME,
    )
    assert any(r["event_id"] == "attack-8" and r["resource"] == "secrets" for r in rows)
    assert all(r["event_id"].startswith(("audit-", "attack-")) for r in rows)


def test_connections_to_a_domain_and_an_ip(store: Settings) -> None:
    by_domain = _named(store, "connections_to", target=ATTACK.c2_domain, **ALL_TIME)
    assert [(r["kind"], r["event_id"]) for r in by_domain] == [
        ("dns_query", "attack-6"),
        ("net_connect", "attack-7"),
    ]
    by_ip = _named(store, "connections_to", target=ATTACK.c2_ip, **ALL_TIME)
    assert [r["event_id"] for r in by_ip] == ["attack-7"]


def test_first_seen_executables(store: Settings) -> None:
    rows = _named(store, "first_seen_executables", namespace=ATTACK.namespace, workload=ATTACK.workload)
    newest = [r["exe"] for r in rows[:3]]
    assert {"/bin/bash", "/bin/cat", "/usr/bin/curl"} <= set(newest) | {r["exe"] for r in rows}
    assert rows[0]["first_event_id"].startswith("attack-")


def test_incident_window(store: Settings) -> None:
    rows = _named(store, "incident_window", incident="inc-attack", minutes=1)
    ids = {r["event_id"] for r in rows}
    assert {f"attack-{i}" for i in range(1, 9)} <= ids
    assert {r["namespace"] for r in rows} == {ATTACK.namespace}
    assert _named(store, "incident_window", incident="no-such-incident") == []


INJECTIONS = [
    "x' OR '1'='1",
    "x' OR 1=1 --",
    "'; DROP TABLE events; --",
    "x\\' OR 1=1 --",
    "shop' UNION ALL SELECT raw FROM cadr.events --",
    "{db:Identifier}",
    "x\n) OR (1=1",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_through_named_parameters_is_inert(store: Settings, value: str) -> None:
    assert _named(store, "pod_activity", namespace=value, pod=value, **ALL_TIME) == []
    assert _named(store, "exec_sessions", namespace=value, **ALL_TIME) == []
    assert _named(store, "connections_to", target=value, **ALL_TIME) == []
    assert _named(store, "service_account_calls", namespace=value, service_account=value, **ALL_TIME) == []
    assert _named(store, "process_tree", incident=value, exec_id=value) == []
    # the table is untouched
    out = run_query(store, "SELECT count() AS n FROM events", fmt="jsonl")
    assert int(orjson.loads(out)["n"]) == 4000


def test_parameters_are_values_even_in_free_sql(store: Settings) -> None:
    out = run_query(
        store,
        "SELECT count() AS n FROM events WHERE namespace = {ns:String}",
        params={"ns": "shop' OR '1'='1"},
        fmt="jsonl",
    )
    assert int(orjson.loads(out)["n"]) == 0


def test_named_queries_on_an_empty_store(tmp_path: Path) -> None:
    settings = Settings()
    settings.data_dir = str(tmp_path)
    with StoreWriter(settings.store_dsn):
        pass
    for name in sorted(NAMED):
        params = {"namespace": "x", "pod": "x", "service_account": "x", "target": "x", "incident": "x"}
        query = load_named_queries()[name]
        args = {k: v for k, v in params.items() if k in {p.name for p in query.params}}
        assert run_query(settings, None, named=name, params=args, fmt="jsonl") == b""
