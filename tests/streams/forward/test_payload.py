"""Selecting and shaping records: filters, payloads, CEF lines, RFC 5424 frames (pure)."""

from __future__ import annotations

import orjson
import pytest

from schemas.records import IncidentStatus, Severity
from streams.forward.cef import cef_line, escape_extension, escape_header
from streams.forward.config import FilterConfig
from streams.forward.parse import parse_destination
from streams.forward.payload import format_payload, make_item, matches, rfc3339, sample_incident
from streams.forward.syslog import Syslog, compact_payload, frame, rfc5424, sd_escape
from tests.streams.forward.servers import make_incident


def test_min_severity() -> None:
    inc = make_incident(1, severity="medium")
    assert matches(inc, Severity.LOW, FilterConfig())
    assert matches(inc, Severity.MEDIUM, FilterConfig())
    assert not matches(inc, Severity.HIGH, FilterConfig())


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (FilterConfig(namespaces=("sh*",)), True),
        (FilterConfig(namespaces=("prod-*",)), False),
        (FilterConfig(exclude_namespaces=("shop",)), False),
        (FilterConfig(exclude_namespaces=("kube-*",)), True),
        (FilterConfig(clusters=("prod",)), True),
        (FilterConfig(rules=("R-SH*",)), True),
        (FilterConfig(rules=("R-OTHER",)), False),
        (FilterConfig(exclude_rules=("R-SHELL",)), False),
        (FilterConfig(mitre=("t1059*",)), True),
        (FilterConfig(mitre=("T1611",)), False),
        (FilterConfig(status=("open",)), True),
        (FilterConfig(status=("closed",)), False),
    ],
)
def test_filters(flt: FilterConfig, expected: bool) -> None:
    assert matches(make_incident(1), Severity.INFO, flt) is expected


def test_exclusion_keeps_an_incident_that_also_touches_a_wanted_namespace() -> None:
    inc = make_incident(1)
    other = make_incident(2, namespace="kube-system").workloads[0]
    inc.workloads.append(other)
    assert matches(inc, Severity.INFO, FilterConfig(exclude_namespaces=("kube-system",)))
    inc.workloads = [other]
    assert not matches(inc, Severity.INFO, FilterConfig(exclude_namespaces=("kube-system",)))


def test_payload_formats_and_extra_fields() -> None:
    inc = make_incident(7, revision=2)
    cadr = format_payload(inc, "cadr", {"environment": "prod", "title": "must not win"})
    assert cadr["incident_id"] == "inc-000007" and cadr["revision"] == 2 and cadr["schema_version"] == 1
    assert cadr["record_type"] == "incident"
    assert cadr["environment"] == "prod" and cadr["title"] == inc.title
    ocsf = format_payload(inc, "ocsf", {"environment": "prod"})
    assert ocsf["class_uid"] == 2004 and ocsf["metadata"]["uid"] == "inc-000007:2"
    assert ocsf["environment"] == "prod"


def test_item_identity() -> None:
    dest = parse_destination({"name": "w", "type": "webhook", "url": "http://x"}, "d")
    item = make_item(make_incident(3, revision=5), dest, raw=b"{}", partition=2, offset=9)
    assert (item.key, item.revision, item.dedup_id) == ("inc-000003", 5, "inc-000003:5")
    assert (item.partition, item.offset) == (2, 9)


def test_sample_incident_is_valid_and_unique() -> None:
    a, b = sample_incident(), sample_incident()
    assert a.incident_id != b.incident_id and a.incident_id.startswith("cadr-test-")
    assert a.status is IncidentStatus.OPEN and a.severity is Severity.HIGH


def test_cef_escaping() -> None:
    assert escape_header("a|b\\c") == "a\\|b\\\\c"
    assert escape_extension("x=1\nline\\") == "x\\=1\\nline\\\\"


def test_cef_line_for_an_incident() -> None:
    inc = make_incident(4, revision=3)
    inc.title = "pipe | in title"
    inc.summary = "a=b\nsecond line"
    line = cef_line(inc, host="node-1", extra_fields={"env name": "prod"})
    assert line.startswith("CEF:0|cadr|cadr|")
    # class id, escaped name, severity (high -> 8), then the extension
    assert "|cadr:incident|pipe \\| in title|8|rt=" in line
    assert "externalId=inc-000004" in line
    assert "cn1=3 cn1Label=revision" in line
    assert "cs6=inc-000004:3 cs6Label=dedupId" in line
    assert "cs2=T1609,T1059.004 cs2Label=mitreTechniques" in line
    assert "env_name=prod" in line
    assert line.endswith("msg=a\\=b\\nsecond line")


def test_rfc5424_and_octet_counting() -> None:
    msg = rfc5424(
        pri=16 * 8 + 3,
        timestamp="2026-11-27T10:00:00.000001Z",
        hostname="node 1",
        app_name="cadr",
        procid="-",
        msgid="incident",
        structured_data='[cadr@32473 incident_id="x"]',
        msg=b'{"a":1}',
    )
    assert (
        msg
        == b'<131>1 2026-11-27T10:00:00.000001Z node_1 cadr - incident [cadr@32473 incident_id="x"] {"a":1}'
    )
    assert frame(msg) == str(len(msg)).encode() + b" " + msg
    assert sd_escape('a"b]c\\') == 'a\\"b\\]c\\\\'
    assert rfc3339(1_790_000_000_123_456_789) == "2026-09-21T14:13:20.123456Z"


def _syslog(**opts: object) -> Syslog:
    table: dict[str, object] = {"name": "s", "type": "syslog", "host": "127.0.0.1", "port": 514, **opts}
    return Syslog(parse_destination(table, "d"), node="node-1")


def test_syslog_frame_for_an_incident() -> None:
    dest = _syslog()
    item = make_item(make_incident(5, revision=2, severity="critical"), dest.cfg)
    data = dest.encode(item)
    length, _, message = data.partition(b" ")
    assert int(length) == len(message)
    # local0 (16) * 8 + critical (2)
    assert message.startswith(b"<130>1 ")
    assert (
        b' node-1 cadr - incident [cadr@32473 incident_id="inc-000005" revision="2" severity="critical"'
        in message
    )
    body = message[message.index(b"] ") + 2 :]
    assert orjson.loads(body)["incident_id"] == "inc-000005"


def test_syslog_compacts_then_refuses_oversized_records() -> None:
    dest = _syslog(max_message_bytes=2000)
    big = make_incident(6, timeline=200)
    item = make_item(big, dest.cfg)
    data = dest.encode(item)
    payload = orjson.loads(data[data.index(b"] {") + 2 :])
    assert payload["truncated"] is True and "timeline" not in payload
    assert payload["summary"] == big.summary
    huge = make_incident(7)
    huge.summary = "x" * 5000
    from streams.forward.syslog import MessageTooLargeError

    with pytest.raises(MessageTooLargeError):
        dest.encode(make_item(huge, dest.cfg))
    # CEF shortens msg instead
    cef = _syslog(max_message_bytes=2000, payload="cef")
    line = cef.encode(make_item(huge, cef.cfg))
    assert len(line) < 2010 and line.endswith(b"...")


def test_compact_payload_for_ocsf() -> None:
    out = compact_payload({"evidences": [1], "finding_info": {"uid": "x", "related_events": [1]}})
    assert out == {"finding_info": {"uid": "x"}, "truncated": True}


def test_cef_line_for_an_alert() -> None:
    from schemas.records import Alert, Event, EventKind, Network, Process, Workload

    event = Event(
        event_id="e1",
        time=1,
        source="ebpf",
        kind=EventKind.NET_CONNECT,
        process=Process(pid=42, comm="curl"),
        network=Network(src_ip="10.0.0.5", src_port=40000, dst_ip="1.2.3.4", dst_port=443),
    )
    alert = Alert(
        alert_id="al-1",
        rule_id="R-EGRESS",
        rule_name="Unexpected egress",
        severity=Severity.MEDIUM,
        message="curl connected out",
        time=2_000_000,
        first_seen=1_000_000,
        last_seen=2_000_000,
        workload=Workload(namespace="shop", pod="web-1"),
        event=event,
    )
    line = cef_line(alert)
    assert line.startswith("CEF:0|cadr|cadr|") and "|R-EGRESS|Unexpected egress|5|" in line
    assert "sproc=curl spid=42" in line and "dst=1.2.3.4 dpt=443" in line
    assert "cs6=al-1:1 cs6Label=dedupId" in line and line.endswith("msg=curl connected out")
    assert matches(alert, Severity.MEDIUM, FilterConfig(rules=("R-*",), namespaces=("shop",)))
    # an alert has no status: a status filter does not drop it
    assert matches(alert, Severity.MEDIUM, FilterConfig(status=("closed",)))
