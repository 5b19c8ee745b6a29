"""Correlation threads, pure (no Kafka): alerts in, stories out."""

from __future__ import annotations

from itertools import count

import msgspec

from cadr.scenario import attack_events
from schemas.records import Actor, Alert, Event, EventKind, IncidentStatus, Severity
from schemas.settings import CorrelateSettings
from streams.correlate import Correlator

_ids = count()
S = 1_000_000_000


def alert_for(
    event: Event,
    rule: str,
    sev: Severity = Severity.MEDIUM,
    tags: list[str] | None = None,
    context: list[Event] | None = None,
    actors: list[Actor] | None = None,
) -> Alert:
    n = next(_ids)
    return Alert(
        alert_id=f"a{n}",
        rule_id=rule,
        rule_name=rule.title(),
        severity=sev,
        mitre=[f"T{1000 + n}"],
        message=f"{rule} fired",
        story=f"did {rule}",
        time=event.time,
        first_seen=event.time,
        last_seen=event.time,
        workload=event.workload,
        event=event,
        context=context or [],
        tags=tags or [],
        actors=actors or [],
    )


def test_attack_scenario_is_one_story_with_every_thread() -> None:
    ev = attack_events(start_ns=1_000 * S)
    exec_audit, shell, curl, _conn, _write, payload, cat, token, secrets = ev
    c = Correlator()
    alerts = [
        alert_for(exec_audit, "exec", actors=[Actor(kind="user", name="alice@example.com")]),
        alert_for(shell, "shell", Severity.HIGH),
        alert_for(curl, "download", context=[shell]),
        alert_for(payload, "drift", Severity.HIGH, context=[shell]),
        alert_for(token, "token", tags=["sa_token"], context=[cat, shell]),
        alert_for(
            secrets,
            "secrets",
            actors=[Actor(kind="service_account", name="system:serviceaccount:payments:payments-api")],
        ),
    ]
    incidents = c.process_many(alerts)
    assert len(incidents) == 1
    inc = incidents[0]
    assert len(inc.alerts) == 6
    assert {a.name for a in inc.actors} == {
        "alice@example.com",
        "system:serviceaccount:payments:payments-api",
    }
    assert set(inc.threads) >= {"exec_session", "process_tree", "token_api"}
    kinds = {e.kind for e in inc.edges}
    assert {"exec_session", "parent_child", "token_api"} <= kinds
    # the exec session edge goes from the audit event to the shell
    assert any(e.kind == "exec_session" and e.dst == shell.process.exec_id for e in inc.edges)  # type: ignore[union-attr]
    # the timeline is in time order and includes the token read and the API call
    times = [t.time for t in inc.timeline]
    assert times == sorted(times)
    assert inc.timeline[0].kind == "k8s_api" and inc.timeline[-1].kind == "k8s_api"
    assert inc.severity is Severity.CRITICAL  # high + a multi-layer chain
    assert inc.summary.startswith("alice@example.com did exec")
    assert "system:serviceaccount:payments:payments-api did secrets" in inc.summary
    assert inc.revision == 6


def test_audit_exec_arriving_after_the_shell_still_joins() -> None:
    ev = attack_events(start_ns=2_000 * S)
    exec_audit, shell = ev[0], ev[1]
    c = Correlator()
    first = c.process(alert_for(shell, "shell"))
    second = c.process(alert_for(exec_audit, "exec"))
    assert first is not None and second is not None
    assert first.incident_id == second.incident_id
    assert "exec_session" in second.threads


def test_same_sequence_in_two_workloads_gives_two_stories() -> None:
    a = attack_events(start_ns=3_000 * S, pod="payments-7d9f-aaaaa", pod_ip="10.42.0.5", tag="a")
    b = attack_events(
        start_ns=3_000 * S, namespace="billing", pod="billing-1-bbbbb", pod_ip="10.42.0.6", tag="b"
    )
    c = Correlator()
    out = c.process_many(
        [
            alert_for(a[1], "shell"),
            alert_for(b[1], "shell"),
            alert_for(a[5], "drift", context=[a[1]]),
            alert_for(b[5], "drift", context=[b[1]]),
        ]
    )
    assert len(out) == 2
    assert all(len(i.alerts) == 2 for i in out)


def test_lateral_movement_links_connection_to_activity_in_the_peer() -> None:
    a = attack_events(start_ns=4_000 * S, pod="front-1", tag="a")
    b = attack_events(start_ns=4_000 * S + 10 * S, namespace="db", pod="db-0", tag="b")
    conn = msgspec.structs.replace(
        a[3], network=msgspec.structs.replace(a[3].network, peer_workload=b[1].workload.key())
    )  # type: ignore[arg-type]
    c = Correlator()
    c.process(alert_for(conn, "egress"))
    inc = c.process(alert_for(b[1], "shell"))
    assert inc is not None and len(inc.alerts) == 2 and "lateral" in inc.threads


def test_privileged_pod_creation_links_to_escape_inside_it() -> None:
    ev = attack_events(start_ns=5_000 * S)
    create = msgspec.structs.replace(
        ev[0], audit=msgspec.structs.replace(ev[0].audit, subresource="", verb="create")
    )  # type: ignore[arg-type]
    c = Correlator()
    c.process(alert_for(create, "privileged-pod"))
    inc = c.process(alert_for(ev[1], "nsenter"))
    assert inc is not None and "privileged_pod" in inc.threads
    assert any(e.kind == "privileged_pod" for e in inc.edges)


def test_redelivered_alert_is_not_a_new_revision_but_a_higher_count_is() -> None:
    ev = attack_events(start_ns=6_000 * S)
    c = Correlator()
    al = alert_for(ev[1], "shell")
    first = c.process(al)
    assert first is not None and first.revision == 1
    assert c.process(al) is None
    bumped = msgspec.structs.replace(al, count=5)
    again = c.process(bumped)
    assert again is not None and again.revision == 2 and again.alerts[0].count == 5


def test_story_closes_after_inactivity_and_reopens_as_new_revision() -> None:
    ev = attack_events(start_ns=7_000 * S)
    c = Correlator(settings=CorrelateSettings(inactivity_close_s=60))
    inc = c.process(alert_for(ev[1], "shell"), now_ns=100 * S)
    assert inc is not None
    assert c.close_idle(now_ns=130 * S) == []
    closed = c.close_idle(now_ns=161 * S)
    assert len(closed) == 1 and closed[0].status is IncidentStatus.CLOSED and closed[0].revision == 2
    later = c.process(alert_for(ev[5], "drift", context=[ev[1]]), now_ns=200 * S)
    assert later is not None and later.incident_id == inc.incident_id
    assert later.status is IncidentStatus.OPEN and later.revision == 3


def test_unrelated_alerts_far_apart_in_time_are_separate() -> None:
    a = attack_events(start_ns=8_000 * S, tag="a")
    b = attack_events(start_ns=8_000 * S + 3600 * S, tag="b")
    c = Correlator()
    out = c.process_many([alert_for(a[1], "shell"), alert_for(b[1], "shell")])
    assert len(out) == 2
    assert EventKind.PROCESS_EXEC.value in {t.kind for t in out[0].timeline}
