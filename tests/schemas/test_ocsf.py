"""OCSF Detection Finding mapping of incidents and alerts (pure)."""

from __future__ import annotations

import orjson

from schemas.ocsf import OCSF_VERSION, alert_to_ocsf, attacks, incident_to_ocsf, severity_id
from schemas.records import (
    Actor,
    Alert,
    AlertRef,
    Audit,
    Event,
    EventKind,
    Incident,
    IncidentStatus,
    Network,
    Process,
    Severity,
    TimelineEntry,
    Workload,
)

NS = 1_000_000_000
T0 = 1_790_000_000 * NS


def _incident(**kw: object) -> Incident:
    base: dict[str, object] = dict(
        incident_id="inc-1",
        revision=1,
        severity=Severity.HIGH,
        title="Shell in web, then token read",
        summary="alice ran kubectl exec into web; /bin/sh read the service-account token.",
        first_seen=T0,
        last_seen=T0 + 60 * NS,
        updated=T0 + 61 * NS,
        workloads=[
            Workload(
                cluster="prod",
                namespace="shop",
                pod="web-1",
                container="web",
                container_id="abc123",
                workload_kind="Deployment",
                workload_name="web",
                image="web:1",
                labels={"app": "web"},
            )
        ],
        actors=[
            Actor(kind="user", name="alice"),
            Actor(kind="service_account", name="system:serviceaccount:shop:web"),
        ],
        mitre=["T1609", "T1059.004", "T9999"],
        alerts=[
            AlertRef(
                alert_id="a1",
                rule_id="R-SHELL",
                rule_name="Shell in container",
                severity=Severity.HIGH,
                time=T0,
                message="sh started",
            ),
            AlertRef(
                alert_id="a2",
                rule_id="R-SHELL",
                rule_name="Shell in container",
                severity=Severity.HIGH,
                time=T0 + NS,
                message="sh again",
            ),
        ],
        timeline=[
            TimelineEntry(time=T0, event_id="e1", kind="process_exec", text="/bin/sh", alert_ids=["a1"])
        ],
    )
    base.update(kw)
    return Incident(**base)  # type: ignore[arg-type]


def test_incident_is_a_detection_finding_with_the_class_fields() -> None:
    f = incident_to_ocsf(_incident(), product_version="1.2.3")
    assert (f["class_uid"], f["category_uid"], f["activity_id"], f["type_uid"]) == (2004, 2, 1, 200401)
    assert f["class_name"] == "Detection Finding" and f["activity_name"] == "Create"
    assert (f["severity_id"], f["severity"]) == (4, "High")
    assert f["metadata"] == {
        "version": OCSF_VERSION,
        "uid": "inc-1:1",
        "correlation_uid": "inc-1",
        "product": {"name": "cadr", "vendor_name": "cadr", "version": "1.2.3"},
    }
    # OCSF times are milliseconds.
    assert f["time"] == (T0 + 61 * NS) // 1_000_000
    info = f["finding_info"]
    assert info["uid"] == "inc-1"
    assert info["title"] == "Shell in web, then token read"
    assert info["desc"].startswith("alice ran kubectl exec")
    assert info["first_seen_time"] == T0 // 1_000_000
    assert info["last_seen_time"] == (T0 + 60 * NS) // 1_000_000
    assert info["types"] == ["cadr incident"]
    # one rule, reported once, although two alerts came from it
    assert info["related_analytics"] == [
        {"uid": "R-SHELL", "name": "Shell in container", "type_id": 1, "type": "Rule"}
    ]
    assert [e["uid"] for e in info["related_events"]] == ["a1", "a2"]
    orjson.dumps(f)  # plain JSON all the way down


def test_activity_follows_revision_and_status() -> None:
    assert incident_to_ocsf(_incident(revision=3))["activity_id"] == 2
    closed = incident_to_ocsf(_incident(revision=4, status=IncidentStatus.CLOSED))
    assert (closed["activity_id"], closed["activity_name"], closed["type_uid"]) == (3, "Close", 200403)
    assert closed["is_alert"] is False
    assert (closed["status_id"], closed["status"]) == (99, "Closed")


def test_attacks_split_sub_techniques_and_tactics() -> None:
    out = attacks(["T1059.004", "T1609", "T9999", "t1609"])
    sub = out[0]
    assert sub["technique"] == {"uid": "T1059", "name": "Command and Scripting Interpreter"}
    assert sub["sub_technique"] == {"uid": "T1059.004", "name": "Unix Shell"}
    assert sub["tactic"] == {"uid": "TA0002", "name": "Execution"}
    assert out[1]["technique"] == {"uid": "T1609", "name": "Container Administration Command"}
    # an id we have no name for still maps, with the id alone; duplicates collapse
    assert out[2] == {"version": "v15", "technique": {"uid": "T9999"}}
    assert len(out) == 3
    # one entry per tactic when a technique serves several
    valid = attacks(["T1078"])
    assert {a["tactic"]["uid"] for a in valid} == {"TA0001", "TA0003", "TA0004", "TA0005"}


def test_resources_and_evidences() -> None:
    f = incident_to_ocsf(_incident())
    (res,) = f["resources"]
    assert res["uid"] == "prod/shop/Deployment/web"
    assert res["type"] == "kubernetes.Deployment"
    assert res["labels"] == ["app=web"]
    assert res["data"]["namespace"] == "shop"
    names = [e["name"] for e in f["evidences"]]
    assert names == ["actor", "actor", "container", "process_exec"]
    assert f["evidences"][0]["actor"]["user"] == {"name": "alice", "type_id": 1, "type": "User"}
    assert f["evidences"][1]["actor"]["user"]["type"] == "Service Account"
    assert f["evidences"][2]["container"] == {"uid": "abc123", "name": "web", "image": {"name": "web:1"}}
    assert f["evidences"][3]["data"]["alert_ids"] == ["a1"]
    assert f["unmapped"]["cadr"]["revision"] == 1


def test_severity_ids_cover_every_severity() -> None:
    assert [severity_id(s) for s in Severity] == [1, 2, 3, 4, 5]


def test_alert_maps_its_event_to_evidence() -> None:
    event = Event(
        event_id="e9",
        time=T0,
        source="ebpf",
        kind=EventKind.NET_CONNECT,
        workload=Workload(namespace="shop", pod="web-1", container_id="abc123"),
        process=Process(pid=42, ppid=1, comm="curl", exe="/usr/bin/curl", args=["curl", "http://x"], uid=0),
        network=Network(src_ip="10.0.0.5", src_port=40000, dst_ip="1.2.3.4", dst_port=443),
    )
    alert = Alert(
        alert_id="al-1",
        rule_id="R-EGRESS",
        rule_name="Unexpected egress",
        severity=Severity.MEDIUM,
        mitre=["T1105"],
        message="curl connected to 1.2.3.4:443",
        time=T0,
        first_seen=T0,
        last_seen=T0 + NS,
        count=3,
        workload=event.workload,
        event=event,
    )
    f = alert_to_ocsf(alert)
    assert (f["activity_id"], f["severity_id"], f["count"]) == (2, 3, 3)
    assert f["finding_info"]["analytic"] == {
        "uid": "R-EGRESS",
        "name": "Unexpected egress",
        "type_id": 1,
        "type": "Rule",
    }
    assert f["finding_info"]["attacks"][0]["tactic"]["name"] == "Command and Control"
    (ev,) = f["evidences"]
    assert ev["process"]["cmd_line"] == "curl http://x"
    assert ev["process"]["file"]["path"] == "/usr/bin/curl"
    assert ev["dst_endpoint"] == {"ip": "1.2.3.4", "port": 443}
    assert ev["container"] == {"uid": "abc123"}
    assert f["metadata"]["uid"] == "al-1:3"


def test_k8s_audit_alert_evidence() -> None:
    event = Event(
        event_id="e10",
        time=T0,
        source="k8s_audit",
        kind=EventKind.K8S_API,
        audit=Audit(
            audit_id="aud-1",
            verb="create",
            user="alice",
            groups=["system:authenticated"],
            resource="pods",
            subresource="exec",
            name="web-1",
            source_ips=["10.1.1.1"],
            response_code=101,
        ),
    )
    alert = Alert(
        alert_id="al-2",
        rule_id="R-EXEC",
        rule_name="kubectl exec",
        severity=Severity.LOW,
        message="exec",
        time=T0,
        first_seen=T0,
        last_seen=T0,
        event=event,
    )
    (ev,) = alert_to_ocsf(alert)["evidences"]
    assert ev["api"]["operation"] == "create"
    assert ev["actor"]["user"] == {"name": "alice", "groups": [{"name": "system:authenticated"}]}
    assert ev["src_endpoint"] == {"ip": "10.1.1.1"}
    assert ev["resources"] == [{"type": "pods/exec", "name": "web-1"}]
