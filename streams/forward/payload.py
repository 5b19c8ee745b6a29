"""What a destination sends: decode, select and shape records (pure functions).

A record read from ``cadr.incidents`` (or ``cadr.alerts``) becomes an :class:`Item`
once: decoded, checked against the destination's minimum severity and filters, and
shaped into the payload object (cadr's own schema or OCSF, plus the extra fields).
Every payload carries the record id and revision, so a receiver can drop duplicates
that at-least-once delivery may produce.
"""

from __future__ import annotations

import importlib.metadata
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.codec import decode_alert, decode_incident, to_dict
from schemas.glob import glob_match
from schemas.ocsf import alert_to_ocsf, incident_to_ocsf
from schemas.records import (
    Actor,
    Alert,
    AlertRef,
    Edge,
    Incident,
    Severity,
    TimelineEntry,
    Workload,
)
from streams.forward.config import DestinationConfig, FilterConfig

__all__ = [
    "PRODUCT_VERSION",
    "Item",
    "Record",
    "decode_record",
    "format_payload",
    "make_item",
    "matches",
    "record_id",
    "record_revision",
    "record_time_ns",
    "rfc3339",
    "sample_incident",
]

Record = Incident | Alert

try:
    PRODUCT_VERSION = importlib.metadata.version("cadr")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    PRODUCT_VERSION = "0.0.0"


@dataclass(slots=True)
class Item:
    """One record on its way to one destination."""

    #: incident_id (alert_id for alerts): records with one key are delivered in order
    key: str
    #: incident revision (alert count): with ``key``, identifies one update for dedup
    revision: int
    record: Record
    #: the JSON object to send (cadr schema or OCSF, with the extra fields)
    payload: dict[str, Any]
    #: the record's bytes as read from Kafka, kept for the dead-letter topic
    raw: bytes = b""
    partition: int = -1
    offset: int = -1
    #: the destination's encoding of this item, computed once per item
    wire: bytes | None = None

    @property
    def dedup_id(self) -> str:
        return f"{self.key}:{self.revision}"


def decode_record(raw: bytes, records: str) -> Record:
    """Decode one Kafka value of the ``records`` topic (raises ``RecordError``)."""
    return decode_alert(raw) if records == "alerts" else decode_incident(raw)


def record_id(record: Record) -> str:
    return record.incident_id if isinstance(record, Incident) else record.alert_id


def record_revision(record: Record) -> int:
    return record.revision if isinstance(record, Incident) else record.count


def record_time_ns(record: Record) -> int:
    """When this revision happened (the incident's last update, the alert's last hit)."""
    if isinstance(record, Incident):
        return record.updated or record.last_seen
    return record.last_seen or record.time


def rfc3339(ns: int) -> str:
    """UTC RFC 3339 timestamp with microseconds (``2026-11-27T10:00:00.123456Z``)."""
    seconds, rest = divmod(ns, 1_000_000_000)  # integers: a float would round the microseconds
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


def _any(values: list[str], globs: tuple[str, ...]) -> bool:
    return any(glob_match(v, g) for v in values for g in globs)


def _all(values: list[str], globs: tuple[str, ...]) -> bool:
    return bool(values) and all(any(glob_match(v, g) for g in globs) for v in values)


def matches(record: Record, min_severity: Severity, f: FilterConfig) -> bool:
    """Does the destination want this record?

    Inclusion lists pass a record when any of its values matches; exclusion lists drop
    a record only when all of its values match (an incident that reaches into a
    namespace of interest is kept even if it also touches an excluded one).
    """
    if record.severity.rank < min_severity.rank:
        return False
    if isinstance(record, Incident):
        workloads = record.workloads
        rules = [a.rule_id for a in record.alerts]
        status = str(record.status)
    else:
        workloads = [record.workload]
        rules = [record.rule_id]
        status = ""
    namespaces = [w.namespace for w in workloads]
    if f.namespaces and not _any(namespaces, f.namespaces):
        return False
    if f.exclude_namespaces and _all(namespaces, f.exclude_namespaces):
        return False
    if f.clusters and not _any([w.cluster for w in workloads], f.clusters):
        return False
    if f.rules and not _any(rules, f.rules):
        return False
    if f.exclude_rules and _all(rules, f.exclude_rules):
        return False
    if f.mitre and not _any([m.upper() for m in record.mitre], tuple(g.upper() for g in f.mitre)):
        return False
    return not (f.status and status and status not in f.status)


def format_payload(record: Record, fmt: str, extra_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object for ``record`` in ``fmt`` (cadr | ocsf), with extra fields on top.

    Extra fields never replace a field of the record: a config that names one is a
    mistake that would corrupt the payload, so the record's value wins.
    """
    if fmt == "ocsf":
        if isinstance(record, Incident):
            out = incident_to_ocsf(record, product_version=PRODUCT_VERSION)
        else:
            out = alert_to_ocsf(record, product_version=PRODUCT_VERSION)
    else:
        out = to_dict(record)
        # omit_defaults drops revision 1 / status open / count 1; a receiver dedups and
        # filters on them, so they are always present here.
        if isinstance(record, Incident):
            out.update(record_type="incident", revision=record.revision, status=str(record.status))
        else:
            out.update(record_type="alert", count=record.count)
    if extra_fields:
        for k, v in extra_fields.items():
            out.setdefault(k, v)
    return out


def make_item(
    record: Record, dest: DestinationConfig, *, raw: bytes = b"", partition: int = -1, offset: int = -1
) -> Item:
    """Shape one record for one destination."""
    return Item(
        key=record_id(record),
        revision=record_revision(record),
        record=record,
        payload=format_payload(record, dest.format, dict(dest.extra_fields)),
        raw=raw,
        partition=partition,
        offset=offset,
    )


def sample_incident(now_ns: int | None = None) -> Incident:
    """A realistic test incident for ``cadr forward --test`` (a shell in a pod, then a token read)."""
    now = time.time_ns() if now_ns is None else now_ns
    first = now - 90 * 1_000_000_000
    workload = Workload(
        cluster="cadr-test",
        namespace="cadr-test",
        pod="web-7d9f8-abcde",
        container="web",
        container_id="0123456789ab",
        workload_kind="Deployment",
        workload_name="web",
        image="registry.example/web:1.4.2",
        service_account="web",
    )
    return Incident(
        incident_id=f"cadr-test-{uuid.uuid4().hex[:12]}",
        revision=1,
        severity=Severity.HIGH,
        title="TEST: interactive shell in web, then service-account token read",
        summary=(
            "This is a test incident sent by `cadr forward --test`. A user ran kubectl exec into "
            "pod web-7d9f8-abcde, started /bin/sh, and the shell read the service-account token."
        ),
        first_seen=first,
        last_seen=now,
        updated=now,
        workloads=[workload],
        actors=[Actor(kind="user", name="alice@example.com")],
        mitre=["T1609", "T1059.004", "T1552.007"],
        alerts=[
            AlertRef(
                alert_id="cadr-test-alert-1",
                rule_id="CADR-TEST-1",
                rule_name="Shell spawned in container",
                severity=Severity.HIGH,
                time=first,
                message="/bin/sh started in web by kubectl exec",
            )
        ],
        timeline=[
            TimelineEntry(time=first, event_id="cadr-test-e1", kind="k8s_api", text="alice ran kubectl exec"),
            TimelineEntry(time=first + 10**9, event_id="cadr-test-e2", kind="process_exec", text="/bin/sh"),
            TimelineEntry(time=now, event_id="cadr-test-e3", kind="file_open", text="read token"),
        ],
        edges=[Edge(src="cadr-test-e1", dst="cadr-test-e2", kind="exec_session")],
    )
