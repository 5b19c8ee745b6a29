"""Map cadr incidents and alerts to OCSF Detection Findings (class 2004).

Pure functions, no I/O: ``streams.forward`` calls them when a destination asks for
``format = "ocsf"``. The target is OCSF 1.3.0; only attributes that schema version
defines are emitted, so a strict validator accepts the output. Times in OCSF are
milliseconds since the epoch (cadr's are nanoseconds).

Choices worth knowing when reading a finding in a SIEM:

- ``finding_info.uid`` is the incident (or alert) id, stable across revisions;
  ``metadata.uid`` is ``<id>:<revision>``, unique per update, so a receiver can drop
  the duplicates an at-least-once forwarder may deliver.
- ``activity_id`` is Create for revision 1, Close for a closed incident, else Update.
- ATT&CK techniques go to ``finding_info.attacks`` (one entry per technique and tactic);
  OCSF puts top-level ``attacks`` only in the Security Control profile, which a detector
  that does not block does not apply.
"""

from __future__ import annotations

from typing import Any

from schemas.records import Actor, Alert, Event, Incident, IncidentStatus, Severity, Workload

__all__ = [
    "OCSF_VERSION",
    "TECHNIQUES",
    "alert_to_ocsf",
    "attacks",
    "incident_to_ocsf",
    "severity_id",
]

OCSF_VERSION = "1.3.0"
CLASS_UID = 2004
CATEGORY_UID = 2
ATTACK_VERSION = "v15"

_ACTIVITY = {1: "Create", 2: "Update", 3: "Close"}
_SEVERITY_ID = {
    Severity.INFO: 1,
    Severity.LOW: 2,
    Severity.MEDIUM: 3,
    Severity.HIGH: 4,
    Severity.CRITICAL: 5,
}
_SEVERITY_NAME = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

_TACTICS = {
    "TA0001": "Initial Access",
    "TA0002": "Execution",
    "TA0003": "Persistence",
    "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion",
    "TA0006": "Credential Access",
    "TA0007": "Discovery",
    "TA0008": "Lateral Movement",
    "TA0009": "Collection",
    "TA0010": "Exfiltration",
    "TA0011": "Command and Control",
    "TA0040": "Impact",
}

#: ATT&CK (Enterprise + Containers) techniques a container runtime detector reports:
#: id -> (name, tactic ids). Unknown ids still map, with the id alone.
TECHNIQUES: dict[str, tuple[str, tuple[str, ...]]] = {
    "T1003": ("OS Credential Dumping", ("TA0006",)),
    "T1014": ("Rootkit", ("TA0005",)),
    "T1018": ("Remote System Discovery", ("TA0007",)),
    "T1021": ("Remote Services", ("TA0008",)),
    "T1036": ("Masquerading", ("TA0005",)),
    "T1040": ("Network Sniffing", ("TA0006", "TA0007")),
    "T1041": ("Exfiltration Over C2 Channel", ("TA0010",)),
    "T1046": ("Network Service Discovery", ("TA0007",)),
    "T1048": ("Exfiltration Over Alternative Protocol", ("TA0010",)),
    "T1053": ("Scheduled Task/Job", ("TA0002", "TA0003", "TA0004")),
    "T1053.007": ("Container Orchestration Job", ("TA0002", "TA0003", "TA0004")),
    "T1055": ("Process Injection", ("TA0005", "TA0004")),
    "T1057": ("Process Discovery", ("TA0007",)),
    "T1059": ("Command and Scripting Interpreter", ("TA0002",)),
    "T1059.004": ("Unix Shell", ("TA0002",)),
    "T1059.006": ("Python", ("TA0002",)),
    "T1068": ("Exploitation for Privilege Escalation", ("TA0004",)),
    "T1069": ("Permission Groups Discovery", ("TA0007",)),
    "T1070": ("Indicator Removal", ("TA0005",)),
    "T1070.004": ("File Deletion", ("TA0005",)),
    "T1071": ("Application Layer Protocol", ("TA0011",)),
    "T1071.004": ("DNS", ("TA0011",)),
    "T1078": ("Valid Accounts", ("TA0001", "TA0003", "TA0004", "TA0005")),
    "T1078.001": ("Default Accounts", ("TA0001", "TA0003", "TA0004", "TA0005")),
    "T1082": ("System Information Discovery", ("TA0007",)),
    "T1083": ("File and Directory Discovery", ("TA0007",)),
    "T1087": ("Account Discovery", ("TA0007",)),
    "T1095": ("Non-Application Layer Protocol", ("TA0011",)),
    "T1098": ("Account Manipulation", ("TA0003", "TA0004")),
    "T1105": ("Ingress Tool Transfer", ("TA0011",)),
    "T1106": ("Native API", ("TA0002",)),
    "T1133": ("External Remote Services", ("TA0001", "TA0003")),
    "T1136": ("Create Account", ("TA0003",)),
    "T1190": ("Exploit Public-Facing Application", ("TA0001",)),
    "T1204.003": ("Malicious Image", ("TA0002",)),
    "T1222": ("File and Directory Permissions Modification", ("TA0005",)),
    "T1485": ("Data Destruction", ("TA0040",)),
    "T1496": ("Resource Hijacking", ("TA0040",)),
    "T1505.003": ("Web Shell", ("TA0003",)),
    "T1525": ("Implant Internal Image", ("TA0003",)),
    "T1528": ("Steal Application Access Token", ("TA0006",)),
    "T1543": ("Create or Modify System Process", ("TA0003", "TA0004")),
    "T1547.006": ("Kernel Modules and Extensions", ("TA0003", "TA0004")),
    "T1548": ("Abuse Elevation Control Mechanism", ("TA0004", "TA0005")),
    "T1548.001": ("Setuid and Setgid", ("TA0004", "TA0005")),
    "T1552": ("Unsecured Credentials", ("TA0006",)),
    "T1552.001": ("Credentials In Files", ("TA0006",)),
    "T1552.007": ("Container API", ("TA0006",)),
    "T1556": ("Modify Authentication Process", ("TA0006", "TA0005", "TA0003")),
    "T1562": ("Impair Defenses", ("TA0005",)),
    "T1562.001": ("Disable or Modify Tools", ("TA0005",)),
    "T1572": ("Protocol Tunneling", ("TA0011",)),
    "T1574.006": ("Dynamic Linker Hijacking", ("TA0003", "TA0004", "TA0005")),
    "T1609": ("Container Administration Command", ("TA0002",)),
    "T1610": ("Deploy Container", ("TA0005", "TA0002")),
    "T1611": ("Escape to Host", ("TA0004",)),
    "T1612": ("Build Image on Host", ("TA0005",)),
    "T1613": ("Container and Resource Discovery", ("TA0007",)),
    "T1620": ("Reflective Code Loading", ("TA0005",)),
    "T1651": ("Cloud Administration Command", ("TA0002",)),
}


def _ms(ns: int) -> int:
    return ns // 1_000_000


def severity_id(severity: Severity) -> int:
    """OCSF ``severity_id`` for a cadr severity (1 Informational .. 5 Critical)."""
    return _SEVERITY_ID[severity]


def attacks(technique_ids: list[str]) -> list[dict[str, Any]]:
    """ATT&CK objects for technique ids (``T1059`` or ``T1059.004``), one per (technique, tactic).

    A sub-technique is reported with its parent as ``technique`` and itself as
    ``sub_technique``, as OCSF models them.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in technique_ids:
        tid = raw.strip().upper()
        if not tid or tid in seen:
            continue
        seen.add(tid)
        parent, _, sub = tid.partition(".")
        name, tactic_ids = TECHNIQUES.get(tid, ("", ()))
        parent_name = TECHNIQUES.get(parent, (name if not sub else "", ()))[0]
        if not tactic_ids and sub:
            tactic_ids = TECHNIQUES.get(parent, ("", ()))[1]
        base: dict[str, Any] = {"version": ATTACK_VERSION, "technique": _named(parent, parent_name)}
        if sub:
            base["sub_technique"] = _named(tid, name)
        if not tactic_ids:
            out.append(base)
            continue
        for ta in tactic_ids:
            out.append({**base, "tactic": {"uid": ta, "name": _TACTICS.get(ta, "")}})
    return out


def _named(uid: str, name: str) -> dict[str, str]:
    return {"uid": uid, "name": name} if name else {"uid": uid}


def _resource(w: Workload) -> dict[str, Any]:
    kind = "Host" if w.is_host else (w.workload_kind or "Pod")
    data = {
        k: v
        for k, v in (
            ("cluster", w.cluster),
            ("namespace", w.namespace),
            ("pod", w.pod),
            ("container", w.container),
            ("container_id", w.container_id),
            ("image", w.image),
            ("service_account", w.service_account),
            ("pod_ip", w.pod_ip),
        )
        if v
    }
    res: dict[str, Any] = {
        "uid": w.key(),
        "name": w.workload_name or w.pod or w.cluster or "host",
        "type": f"kubernetes.{kind}" if not w.is_host else "host",
    }
    if w.labels:
        res["labels"] = [f"{k}={v}" for k, v in sorted(w.labels.items())]
    if data:
        res["data"] = data
    return res


def _container(w: Workload) -> dict[str, Any] | None:
    if not w.container_id and not w.container:
        return None
    out: dict[str, Any] = {}
    if w.container_id:
        out["uid"] = w.container_id
    if w.container:
        out["name"] = w.container
    if w.image:
        out["image"] = {"name": w.image}
    return out


def _user(actor: Actor) -> dict[str, Any]:
    if actor.kind == "user":
        return {"name": actor.name, "type_id": 1, "type": "User"}
    return {"name": actor.name, "type_id": 99, "type": "Service Account"}


def _metadata(uid: str, correlation_uid: str, product_version: str) -> dict[str, Any]:
    return {
        "version": OCSF_VERSION,
        "uid": uid,
        "correlation_uid": correlation_uid,
        "product": {"name": "cadr", "vendor_name": "cadr", "version": product_version},
    }


def _class_fields(activity_id: int, sev: Severity) -> dict[str, Any]:
    sid = severity_id(sev)
    return {
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "activity_id": activity_id,
        "activity_name": _ACTIVITY[activity_id],
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"Detection Finding: {_ACTIVITY[activity_id]}",
        "severity_id": sid,
        "severity": _SEVERITY_NAME[sid],
    }


def incident_to_ocsf(incident: Incident, *, product_version: str = "") -> dict[str, Any]:
    """One incident revision as an OCSF Detection Finding."""
    if incident.status == IncidentStatus.CLOSED:
        activity = 3
    elif incident.revision <= 1:
        activity = 1
    else:
        activity = 2
    updated = incident.updated or incident.last_seen
    finding_info: dict[str, Any] = {
        "uid": incident.incident_id,
        "title": incident.title,
        "desc": incident.summary,
        "types": ["cadr incident"],
        "created_time": _ms(incident.first_seen),
        "first_seen_time": _ms(incident.first_seen),
        "last_seen_time": _ms(incident.last_seen),
        "modified_time": _ms(updated),
        "analytic": {"name": "cadr story correlation", "type_id": 99, "type": "Correlation"},
    }
    if incident.mitre:
        finding_info["attacks"] = attacks(incident.mitre)
    if incident.alerts:
        finding_info["related_analytics"] = _dedup(
            {"uid": a.rule_id, "name": a.rule_name, "type_id": 1, "type": "Rule"} for a in incident.alerts
        )
        finding_info["related_events"] = [
            {"uid": a.alert_id, "type": a.rule_name, "product_uid": a.rule_id} for a in incident.alerts
        ]
    evidences: list[dict[str, Any]] = []
    for actor in incident.actors:
        evidences.append({"name": "actor", "actor": {"user": _user(actor)}})
    for w in incident.workloads:
        c = _container(w)
        if c is not None:
            evidences.append({"name": "container", "container": c})
    for entry in incident.timeline:
        data: dict[str, Any] = {"time": _ms(entry.time), "kind": entry.kind, "text": entry.text}
        if entry.workload:
            data["workload"] = entry.workload
        if entry.alert_ids:
            data["alert_ids"] = entry.alert_ids
        if entry.mitre:
            data["mitre"] = entry.mitre
        evidences.append({"uid": entry.event_id, "name": entry.kind, "data": data})
    out: dict[str, Any] = {
        **_class_fields(activity, incident.severity),
        "time": _ms(updated),
        "start_time": _ms(incident.first_seen),
        "end_time": _ms(incident.last_seen),
        "message": incident.title,
        "status_id": 1 if incident.status == IncidentStatus.OPEN else 99,
        "status": "New" if incident.status == IncidentStatus.OPEN else "Closed",
        "is_alert": activity != 3,
        "finding_info": finding_info,
        "metadata": _metadata(
            f"{incident.incident_id}:{incident.revision}", incident.incident_id, product_version
        ),
        "unmapped": {
            "cadr": {
                "incident_id": incident.incident_id,
                "revision": incident.revision,
                "edges": len(incident.edges),
                "threads": incident.threads,
            }
        },
    }
    if incident.workloads:
        out["resources"] = [_resource(w) for w in incident.workloads]
    if evidences:
        out["evidences"] = evidences
    return out


def _dedup(items: Any) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for item in items:
        if item["uid"] not in seen:
            seen.add(item["uid"])
            out.append(item)
    return out


def _event_evidence(event: Event) -> dict[str, Any]:
    ev: dict[str, Any] = {"uid": event.event_id, "name": str(event.kind)}
    if event.process is not None:
        p = event.process
        proc: dict[str, Any] = {"pid": p.pid}
        if p.comm:
            proc["name"] = p.comm
        if p.args:
            proc["cmd_line"] = " ".join(p.args)
        if p.exe:
            proc["file"] = {"path": p.exe, "name": p.exe.rsplit("/", 1)[-1], "type_id": 1}
        if p.exec_id:
            proc["uid"] = p.exec_id
        if p.uid >= 0:
            proc["user"] = {"uid": str(p.uid)}
        if p.ppid or p.parent_exe:
            parent: dict[str, Any] = {"pid": p.ppid}
            if p.parent_exe:
                parent["file"] = {"path": p.parent_exe, "name": p.parent_exe.rsplit("/", 1)[-1], "type_id": 1}
            proc["parent_process"] = parent
        ev["process"] = proc
    if event.file is not None:
        ev["file"] = {"path": event.file.path, "name": event.file.path.rsplit("/", 1)[-1], "type_id": 1}
    if event.network is not None:
        n = event.network
        if n.src_ip or n.src_port:
            ev["src_endpoint"] = {"ip": n.src_ip, "port": n.src_port}
        if n.dst_ip or n.dst_port:
            ev["dst_endpoint"] = {"ip": n.dst_ip, "port": n.dst_port}
        ev["connection_info"] = {"protocol_name": n.protocol, "direction": n.direction}
    if event.dns is not None:
        ev["query"] = {"hostname": event.dns.query, "type": event.dns.qtype}
    if event.audit is not None:
        a = event.audit
        ev["api"] = {
            "operation": a.verb,
            "request": {"uid": a.audit_id},
            "response": {"code": a.response_code},
            "service": {"name": "kubernetes"},
        }
        user: dict[str, Any] = {"name": a.user}
        if a.groups:
            user["groups"] = [{"name": g} for g in a.groups]
        ev["actor"] = {"user": user}
        if a.source_ips:
            ev["src_endpoint"] = {"ip": a.source_ips[0]}
        if a.resource:
            ev["resources"] = [
                {"type": a.resource + (f"/{a.subresource}" if a.subresource else ""), "name": a.name}
            ]
    c = _container(event.workload)
    if c is not None:
        ev["container"] = c
    if len(ev) == 2:  # uid and name only: OCSF wants at least one evidence attribute
        ev["data"] = {"kind": str(event.kind), "time": _ms(event.time)}
    return ev


def alert_to_ocsf(alert: Alert, *, product_version: str = "") -> dict[str, Any]:
    """One alert as an OCSF Detection Finding (Create for the first hit, Update for repeats)."""
    activity = 1 if alert.count <= 1 else 2
    finding_info: dict[str, Any] = {
        "uid": alert.alert_id,
        "title": alert.rule_name,
        "desc": alert.message,
        "types": [alert.rule_id],
        "created_time": _ms(alert.first_seen),
        "first_seen_time": _ms(alert.first_seen),
        "last_seen_time": _ms(alert.last_seen),
        "analytic": {"uid": alert.rule_id, "name": alert.rule_name, "type_id": 1, "type": "Rule"},
    }
    if alert.mitre:
        finding_info["attacks"] = attacks(alert.mitre)
    evidences: list[dict[str, Any]] = [{"name": "actor", "actor": {"user": _user(a)}} for a in alert.actors]
    if alert.event is not None:
        evidences.append(_event_evidence(alert.event))
    out: dict[str, Any] = {
        **_class_fields(activity, alert.severity),
        "time": _ms(alert.time),
        "start_time": _ms(alert.first_seen),
        "end_time": _ms(alert.last_seen),
        "count": alert.count,
        "message": alert.message,
        "status_id": 1,
        "status": "New",
        "is_alert": True,
        "finding_info": finding_info,
        "resources": [_resource(alert.workload)],
        "metadata": _metadata(
            f"{alert.alert_id}:{alert.count}", alert.dedup_key or alert.alert_id, product_version
        ),
    }
    if evidences:
        out["evidences"] = evidences
    return out
