"""ArcSight Common Event Format (CEF) lines for incidents and alerts (pure).

``CEF:0|cadr|cadr|<version>|<class id>|<name>|<severity 0-10>|<extension>``: header
fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=`` and line breaks. Every other control
character (ESC, NUL, BEL, the C1 range ...) is first written visibly by :func:`schemas.text.escape_controls`
(its backslash then escaped as CEF wants), so no SIEM console or log pipeline receives one raw.
Custom fields use the standard ``csN``/``cnN`` pairs with their ``...Label`` keys, so
ArcSight, QRadar and Sentinel parse them without a custom dictionary.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.records import Alert, Incident, Severity
from schemas.text import escape_controls
from streams.forward.payload import PRODUCT_VERSION, Record

__all__ = ["CEF_SEVERITY", "cef_line", "escape_extension", "escape_header"]

CEF_SEVERITY = {
    Severity.INFO: 1,
    Severity.LOW: 3,
    Severity.MEDIUM: 5,
    Severity.HIGH: 8,
    Severity.CRITICAL: 10,
}
_KEY = re.compile(r"[^A-Za-z0-9_]")


def escape_header(value: str) -> str:
    value = escape_controls(value, keep="\r\n")
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def escape_extension(value: Any) -> str:
    text = escape_controls(value if isinstance(value, str) else str(value), keep="\r\n")
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _custom(pairs: list[tuple[str, str, Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, label, value in pairs:
        if value in ("", None, []):
            continue
        out.append((key, value))
        out.append((f"{key}Label", label))
    return out


def _incident_fields(inc: Incident, host: str) -> tuple[str, str, list[tuple[str, Any]]]:
    namespaces = sorted({w.namespace for w in inc.workloads if w.namespace})
    fields: list[tuple[str, Any]] = [
        ("rt", _ms(inc.updated or inc.last_seen)),
        ("start", _ms(inc.first_seen)),
        ("end", _ms(inc.last_seen)),
        ("externalId", inc.incident_id),
        ("cat", "incident"),
        ("cnt", len(inc.alerts)),
    ]
    if host:
        fields.append(("dvchost", host))
    if inc.actors:
        fields.append(("suser", ",".join(a.name for a in inc.actors)))
    fields += _custom(
        [
            ("cn1", "revision", inc.revision),
            ("cs1", "status", str(inc.status)),
            ("cs2", "mitreTechniques", ",".join(inc.mitre)),
            ("cs3", "namespaces", ",".join(namespaces)),
            ("cs4", "workloads", ",".join(w.key() for w in inc.workloads)),
            ("cs5", "rules", ",".join(sorted({a.rule_id for a in inc.alerts}))),
            ("cs6", "dedupId", f"{inc.incident_id}:{inc.revision}"),
        ]
    )
    fields.append(("msg", inc.summary))
    return "cadr:incident", inc.title, fields


def _alert_fields(alert: Alert, host: str) -> tuple[str, str, list[tuple[str, Any]]]:
    w = alert.workload
    fields: list[tuple[str, Any]] = [
        ("rt", _ms(alert.time)),
        ("start", _ms(alert.first_seen)),
        ("end", _ms(alert.last_seen)),
        ("externalId", alert.alert_id),
        ("cat", "alert"),
        ("cnt", alert.count),
    ]
    if host:
        fields.append(("dvchost", host))
    if alert.actors:
        fields.append(("suser", ",".join(a.name for a in alert.actors)))
    ev = alert.event
    if ev is not None and ev.process is not None:
        fields += [("sproc", ev.process.comm or ev.process.exe), ("spid", ev.process.pid)]
    if ev is not None and ev.file is not None:
        fields.append(("filePath", ev.file.path))
    if ev is not None and ev.network is not None:
        n = ev.network
        fields += [
            (k, v)
            for k, v in (("src", n.src_ip), ("spt", n.src_port), ("dst", n.dst_ip), ("dpt", n.dst_port))
            if v
        ]
    if ev is not None and ev.audit is not None:
        fields += [
            (k, v) for k, v in (("requestMethod", ev.audit.verb), ("request", ev.audit.request_uri)) if v
        ]
    fields += _custom(
        [
            ("cn1", "revision", alert.count),
            ("cs2", "mitreTechniques", ",".join(alert.mitre)),
            ("cs3", "namespaces", w.namespace),
            ("cs4", "workloads", w.key()),
            ("cs5", "rules", alert.rule_id),
            ("cs6", "dedupId", f"{alert.alert_id}:{alert.count}"),
        ]
    )
    fields.append(("msg", alert.message))
    return alert.rule_id, alert.rule_name, fields


def cef_line(
    record: Record,
    *,
    host: str = "",
    extra_fields: dict[str, Any] | None = None,
    max_msg_chars: int | None = None,
) -> str:
    """The CEF line for one incident or alert; ``max_msg_chars`` shortens ``msg`` to fit a size limit."""
    if isinstance(record, Incident):
        class_id, name, fields = _incident_fields(record, host)
    else:
        class_id, name, fields = _alert_fields(record, host)
    used = {k for k, _ in fields}
    for k, v in (extra_fields or {}).items():
        key = _KEY.sub("_", k)
        if key and key not in used:
            fields.insert(-1, (key, v))  # msg stays last: it is the field that gets shortened
            used.add(key)
    if max_msg_chars is not None:
        key, msg = fields[-1]
        if len(msg) > max_msg_chars:
            fields[-1] = (key, msg[: max(0, max_msg_chars - 3)] + "...")
    header = "|".join(
        [
            "CEF:0",
            "cadr",
            "cadr",
            escape_header(PRODUCT_VERSION),
            escape_header(class_id),
            escape_header(name),
            str(CEF_SEVERITY[record.severity]),
        ]
    )
    ext = " ".join(f"{k}={escape_extension(v)}" for k, v in fields)
    return f"{header}|{ext}"
