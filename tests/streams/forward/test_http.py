"""HEC, bulk and webhook senders against real HTTP(S) servers on loopback.

The servers (tests/streams/forward/servers.py) implement the documented request and
response formats, including partial failures: HEC error codes with
``invalid-event-number``, bulk item errors (400, 409, 429), whole-request 413/429/503,
TLS with client certificates. Each test drives the real delivery loop.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from streams.forward.consumer import send_test
from streams.forward.delivery import Deliverer
from streams.forward.destinations import build_destination
from streams.forward.metrics import DestinationMetrics
from streams.forward.parse import parse_destination
from streams.forward.payload import Item, make_item
from tests.streams.forward.servers import BulkServer, HecServer, WebhookServer, make_incident

FAST_RETRY = {"initial_backoff_s": 0.01, "max_backoff_s": 0.05}


class Run:
    """One destination, its metrics and the dead letters it produced."""

    def __init__(self, table: dict[str, Any]) -> None:
        table = {"retry": FAST_RETRY, "name": "d", **table}
        self.cfg = parse_destination(table, "test")
        self.dest = build_destination(self.cfg, node="node-1")
        self.metrics = DestinationMetrics(self.cfg.name, self.cfg.type)
        self.dead: list[tuple[Item, str, Any]] = []

        async def dead_letter(item: Item, reason: str, reply: Any) -> None:
            self.dead.append((item, reason, reply))

        self.deliverer = Deliverer(self.dest, self.metrics, dead_letter)

    def items(self, spec: list[tuple[int, int]], **kw: Any) -> list[Item]:
        return [make_item(make_incident(n, r, **kw), self.cfg) for n, r in spec]

    async def deliver(self, items: list[Item]) -> None:
        try:
            await asyncio.wait_for(self.deliverer.deliver(items), timeout=60)
        finally:
            await self.dest.close()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    client = ca.issue_cert("cadr-forwarder")
    paths = {"ca_file": tmp_path / "ca.pem", "cert_file": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(paths["ca_file"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["cert_file"]))
    return {k: str(v) for k, v in paths.items()}


def server_ssl(ca: trustme.CA, *, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def _pairs(n: int, revisions: int) -> list[tuple[int, int]]:
    return [(i, r) for r in range(1, revisions + 1) for i in range(n)]


def _assert_in_order(ids: list[str], expected: set[str]) -> None:
    """Every expected id arrived; per incident, first arrivals are in revision order."""
    assert set(ids) >= expected, sorted(expected - set(ids))[:5]
    seen: set[str] = set()
    last: dict[str, int] = {}
    for dedup in ids:
        if dedup in seen:
            continue
        seen.add(dedup)
        key, rev = dedup.rsplit(":", 1)
        assert int(rev) > last.get(key, 0), f"{dedup} after revision {last.get(key)}"
        last[key] = int(rev)


# --- Splunk HEC -----------------------------------------------------------------------------


async def test_hec_envelope_and_order() -> None:
    async with HecServer() as hec:
        run = Run(
            {"type": "splunk_hec", "url": hec.url, "token": "hec-token", "index": "security", "batch_size": 7}
        )
        items = run.items(_pairs(10, 3))
        await run.deliver(items)
    ev = hec.events[0]
    assert set(ev) == {"time", "host", "source", "sourcetype", "index", "event", "fields"}
    assert (ev["host"], ev["source"], ev["sourcetype"], ev["index"]) == (
        "node-1",
        "cadr",
        "cadr:incident",
        "security",
    )
    assert ev["event"]["incident_id"] == ev["fields"]["incident_id"]
    assert isinstance(ev["time"], float)
    ids = [f"{e['fields']['incident_id']}:{e['fields']['revision']}" for e in hec.events]
    assert len(ids) == 30
    _assert_in_order(ids, {i.dedup_id for i in items})
    assert run.metrics.sent == 30 and run.metrics.failed == 0


async def test_hec_ocsf_payload() -> None:
    async with HecServer() as hec:
        run = Run({"type": "splunk_hec", "url": hec.url, "token": "hec-token", "format": "ocsf"})
        await run.deliver(run.items([(1, 2)]))
    (ev,) = hec.events
    assert ev["sourcetype"] == "cadr:incident:ocsf"
    assert ev["event"]["class_uid"] == 2004 and ev["event"]["metadata"]["uid"] == "inc-000001:2"


async def test_hec_busy_is_retried() -> None:
    async with HecServer() as hec:
        hec.fail_next(3, 503, {"text": "Server is busy", "code": 9})
        run = Run({"type": "splunk_hec", "url": hec.url, "token": "hec-token", "concurrency": 1})
        await run.deliver(run.items(_pairs(5, 1)))
    assert len(hec.events) == 5
    assert (run.metrics.failed, run.metrics.retried, run.metrics.sent) == (15, 15, 5)
    assert not run.dead


async def test_hec_invalid_event_is_dead_lettered_with_the_reply() -> None:
    bad = "inc-000003"
    async with HecServer(invalid=lambda ev: ev["event"]["incident_id"] == bad) as hec:
        run = Run({"type": "splunk_hec", "url": hec.url, "token": "hec-token", "concurrency": 1})
        items = run.items(_pairs(6, 1))
        await run.deliver(items)
    ((item, reason, reply),) = run.dead
    assert item.key == bad and reason == "rejected by destination"
    assert reply == {
        "status": 400,
        "body": {"text": "Invalid data format", "code": 6, "invalid-event-number": 3},
    }
    ids = [f"{e['fields']['incident_id']}:{e['fields']['revision']}" for e in hec.events]
    # events before the bad one were indexed and are sent again (at-least-once): dedup by id
    assert set(ids) == {i.dedup_id for i in items if i.key != bad}
    assert run.metrics.dead_lettered == 1


async def test_hec_wrong_token_waits_until_fixed() -> None:
    """Credentials refused (code 4): records wait, they are not dead-lettered."""
    async with HecServer(token="rotated") as hec:
        run = Run({"type": "splunk_hec", "url": hec.url, "token": "hec-token"})
        task = asyncio.create_task(run.deliver(run.items(_pairs(3, 1))))
        while run.metrics.failed < 6:
            await asyncio.sleep(0.01)
        assert not hec.events and not run.metrics.up and "invalid token" in run.metrics.last_error
        hec.token = "hec-token"  # the operator fixes the token
        await asyncio.wait_for(task, 30)
    assert len(hec.events) == 3 and not run.dead and run.metrics.up


async def test_hec_indexer_acknowledgment() -> None:
    async with HecServer(ack=True, ack_after_polls=3) as hec:
        run = Run(
            {
                "type": "splunk_hec",
                "url": hec.url,
                "token": "hec-token",
                "ack": True,
                "channel": "7f3c5e2a-1b4d-4c8e-9f00-123456789abc",
                "ack_poll_interval_s": 0.01,
            }
        )
        await run.deliver(run.items(_pairs(4, 1)))
    assert len(hec.events) == 4 and run.metrics.sent == 4
    assert all(polls >= 3 for polls in hec._acks.values())


async def test_hec_over_mutual_tls(ca: trustme.CA, tls_files: dict[str, str]) -> None:
    async with HecServer(ssl_context=server_ssl(ca, require_client_cert=True)) as hec:
        run = Run({"type": "splunk_hec", "url": hec.url, "token": "hec-token", "tls": tls_files})
        await run.deliver(run.items([(1, 1)]))
        assert len(hec.events) == 1
        # without the client certificate the handshake fails: not delivered, reported
        cfg = parse_destination(
            {
                "name": "x",
                "type": "splunk_hec",
                "url": hec.url,
                "token": "hec-token",
                "tls": {"ca_file": tls_files["ca_file"]},
            },
            "t",
        )
        result = await send_test(cfg)
        assert not result.ok and "not delivered" in result.message


async def test_send_test_incident() -> None:
    async with HecServer() as hec:
        cfg = parse_destination(
            {"name": "x", "type": "splunk_hec", "url": hec.url, "token": "hec-token"}, "t"
        )
        result = await send_test(cfg, node="node-1")
    assert result.ok, result.message
    (ev,) = hec.events
    assert ev["event"]["incident_id"].startswith("cadr-test-")


# --- Elasticsearch / OpenSearch bulk ----------------------------------------------------------


async def test_bulk_creates_documents_with_idempotent_ids() -> None:
    async with BulkServer(api_key="k") as es:
        run = Run(
            {"type": "elasticsearch", "url": es.url, "api_key": "k", "index": "cadr-%Y.%m", "batch_size": 8}
        )
        items = run.items(_pairs(6, 2))
        await run.deliver(items)
        # a retry of the same records is answered 409 and counted as duplicates
        again = Run({"type": "elasticsearch", "url": es.url, "api_key": "k", "index": "cadr-%Y.%m"})
        await again.deliver(again.items([(0, 1), (1, 1)]))
    docs = es.documents("cadr-2026.09")
    assert set(docs) == {i.dedup_id for i in items}
    doc = docs["inc-000002:2"]
    assert doc["revision"] == 2 and doc["@timestamp"].endswith("Z")
    _assert_in_order([d for _, d in es.arrivals], set(docs))
    assert again.metrics.duplicates == 2 and again.metrics.sent == 2 and es.conflicts == 2


async def test_bulk_item_errors_retry_429_and_dead_letter_400() -> None:
    throttled: set[str] = set()

    def status(doc_id: str, source: dict[str, Any]) -> int:
        if source["incident_id"] == "inc-000002":
            return 400
        if doc_id == "inc-000004:1" and doc_id not in throttled:
            throttled.add(doc_id)
            return 429
        return 201

    async with BulkServer(item_status=status) as es:
        run = Run({"type": "elasticsearch", "url": es.url, "index": "cadr", "concurrency": 1})
        items = run.items(_pairs(6, 2))
        await run.deliver(items)
    docs = es.documents("cadr")
    assert set(docs) == {i.dedup_id for i in items if i.key != "inc-000002"}
    assert sorted(i.dedup_id for i, _, _ in run.dead) == ["inc-000002:1", "inc-000002:2"]
    _, _, reply = run.dead[0]
    assert reply["status"] == 400 and reply["error"]["type"] == "mapper_parsing_exception"
    # one revision per incident per bulk request: 4:2 waited for 4:1's retry
    assert run.metrics.duplicates == 0 and run.metrics.failed == 1
    _assert_in_order([d for _, d in es.arrivals], set(docs))


async def test_bulk_whole_request_errors() -> None:
    async with BulkServer() as es:
        es.fail_next(1, 429, {"error": "too many requests"}, {"Retry-After": "0"})
        es.fail_next(1, 503, {"error": "unavailable"})
        es.fail_next(1, 413, {"error": "request entity too large"})
        run = Run({"type": "elasticsearch", "url": es.url, "index": "cadr", "concurrency": 1})
        items = run.items(_pairs(4, 1))
        await run.deliver(items)
    # 429 and 503 retried, 413 split the request in two; everything arrived
    assert set(es.documents("cadr")) == {i.dedup_id for i in items}
    assert run.metrics.failed == 8 and not run.dead


# --- Webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["array", "ndjson", "object"])
async def test_webhook_bodies(body: str) -> None:
    async with WebhookServer(bearer="s3cret") as hook:
        run = Run({"type": "webhook", "url": hook.url + "/hook", "bearer_token": "s3cret", "body": body})
        items = run.items(_pairs(3, 2))
        await run.deliver(items)
    ids = [f"{r['incident_id']}:{r['revision']}" for r in hook.records]
    _assert_in_order(ids, {i.dedup_id for i in items})
    if body == "object":
        assert len(hook.headers) == 6
        assert {h["Idempotency-Key"] for h in hook.headers} == {i.dedup_id for i in items}


async def test_webhook_statuses() -> None:
    async with WebhookServer(user="u", password="p") as hook:
        hook.fail_next(1, 429, {"error": "slow down"}, {"Retry-After": "0"})
        hook.fail_next(1, 409, {"error": "already have it"})
        hook.fail_next(3, 400, {"error": "bad record"})
        run = Run(
            {
                "type": "webhook",
                "url": hook.url + "/hook",
                "username": "u",
                "password": "p",
                "batch_size": 2,
                "concurrency": 1,
                "headers": {"X-Tenant": "blue"},
            }
        )
        items = run.items([(1, 1), (2, 1), (3, 1), (4, 1)])
        await run.deliver(items)
    # 429 retried; 409 = the first pair is a duplicate; then the second pair is refused (400)
    # as a whole, split, each refused alone -> both dead-lettered with the reply.
    assert run.metrics.duplicates == 2
    assert sorted(i.dedup_id for i, _, _ in run.dead) == ["inc-000003:1", "inc-000004:1"]
    assert run.dead[0][2] == {"status": 400, "body": {"error": "bad record"}}
    assert hook.records == []
    assert run.metrics.failed == 2


async def test_webhook_down_then_up() -> None:
    hook = WebhookServer()
    run = Run({"type": "webhook", "url": hook.url + "/hook"})
    task = asyncio.create_task(run.deliver(run.items(_pairs(5, 1))))
    while run.metrics.failed < 10:
        await asyncio.sleep(0.01)
    assert not run.metrics.up and "ClientConnectorError" in run.metrics.last_error
    async with hook:
        await asyncio.wait_for(task, 30)
    assert len(hook.records) == 5 and run.metrics.up and not run.dead


async def test_alerts_as_ocsf_to_hec() -> None:
    """``records = "alerts"``: alerts are forwarded like incidents, keyed by alert id and count."""
    from schemas.records import Alert, Severity, Workload

    alert = Alert(
        alert_id="al-7",
        rule_id="R-SHELL",
        rule_name="Shell in container",
        severity=Severity.HIGH,
        mitre=["T1059.004"],
        message="/bin/sh in web",
        time=1_790_000_000_000_000_000,
        first_seen=1_790_000_000_000_000_000,
        last_seen=1_790_000_000_000_000_000,
        count=2,
        workload=Workload(namespace="shop", pod="web-1"),
    )
    async with HecServer() as hec:
        run = Run(
            {
                "type": "splunk_hec",
                "url": hec.url,
                "token": "hec-token",
                "records": "alerts",
                "format": "ocsf",
                "filter": {"rules": ["R-*"], "namespaces": ["shop"]},
            }
        )
        await run.deliver([make_item(alert, run.cfg)])
    (ev,) = hec.events
    assert ev["sourcetype"] == "cadr:alert:ocsf"
    assert ev["fields"] == {"alert_id": "al-7", "revision": "2", "severity": "high"}
    assert ev["event"]["finding_info"]["analytic"]["uid"] == "R-SHELL"
    assert ev["event"]["metadata"]["uid"] == "al-7:2"
