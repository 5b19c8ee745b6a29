"""The audit webhook: TLS client authentication, bearer token, body limits, validation, status codes.

These run the real aiohttp server over TLS on loopback with a memory sink; the Kafka path (acks, Kafka
down -> 503) is in test_kafka.py.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest

from schemas.codec import decode_event
from schemas.records import DeadLetter
from sensors.audit.errors import WebhookConfigError
from sensors.audit.sink import MemorySink
from sensors.audit.webhook import AuditWebhook
from tests.sensors.audit.support import (
    FALCO,
    TlsFiles,
    audit_settings,
    event_list,
    make_tls,
    running_webhook,
)

Hook = tuple[AuditWebhook, MemorySink]
EXEC = orjson.loads((FALCO / "exec_pod.json").read_bytes())


def _event(audit_id: str, **over: Any) -> dict[str, Any]:
    ev = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/pods/web-1",
        "verb": "get",
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "kubectl/v1.30.0",
        "objectRef": {"resource": "pods", "namespace": "default", "name": "web-1", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-01-02T03:04:05.123456Z",
        "stageTimestamp": "2026-01-02T03:04:05.234567Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    }
    ev.update(over)
    return ev


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path)


@pytest.fixture
async def hook(tls: TlsFiles) -> AsyncIterator[Hook]:
    sink = MemorySink()
    settings = audit_settings(tls, max_body_bytes=64 << 10)
    async with running_webhook(settings, sink, cluster="c1", node="n1") as h:
        yield h, sink


async def _post(
    hook: AuditWebhook,
    tls: TlsFiles,
    body: Any,
    *,
    token: str | None = None,
    ctx: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token or tls.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(hook.url, data=body, ssl=ctx or tls.client_context(), headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def _dead(sink: MemorySink) -> list[DeadLetter]:
    return [msgspec.json.decode(v, type=DeadLetter) for _, v in sink.dead]


async def test_event_list_is_stored_and_answered_200(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, body = await _post(h, tls, event_list([_event("a-1"), _event("a-2"), _event("a-3", verb="list")]))
    assert status == 200 and body == {"stored": 3, "rejected": 0}
    events = [decode_event(v) for _, v in sink.events]
    assert [k for k, _ in sink.events] == [b"a-1", b"a-2", b"a-3"]
    assert [e.event_id for e in events] == [f"k8s:a-{i}:ResponseComplete" for i in (1, 2, 3)]
    first = events[0]
    assert first.source == "k8s_audit" and first.kind == "k8s_api" and first.node == "n1"
    assert first.time == 1767323045_234567000
    assert first.workload.cluster == "c1" and first.workload.pod == "web-1"
    assert first.audit is not None and first.audit.user == "alice" and first.audit.source_ips == ["10.0.0.7"]
    assert h.stats.events == 3


async def test_a_single_event_blocking_mode_is_accepted(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, _ = await _post(h, tls, orjson.dumps(EXEC))
    assert status == 200
    (event,) = [decode_event(v) for _, v in sink.events]
    assert event.audit is not None and event.audit.subresource == "exec"
    assert event.audit.request["command"] == ["bash"]


async def test_a_retried_batch_yields_the_same_event_ids(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    body = event_list([_event("r-1"), _event("r-1", stage="ResponseStarted")])
    await _post(h, tls, body)
    await _post(h, tls, body)
    ids = [decode_event(v).event_id for _, v in sink.events]
    assert ids[:2] == ids[2:] and len(set(ids)) == 2


async def test_no_client_certificate_is_refused(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await _post(h, tls, event_list([_event("x")]), ctx=tls.client_context(with_cert=False))
    assert not sink.events


async def test_a_client_certificate_from_another_ca_is_refused(
    hook: Hook, tls: TlsFiles, tmp_path: Path
) -> None:
    h, sink = hook
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await _post(h, tls, event_list([_event("x")]), ctx=tls.foreign_client_context(tmp_path))
    assert not sink.events


async def test_a_server_from_another_ca_is_not_trusted_by_the_client(tls: TlsFiles, tmp_path: Path) -> None:
    # the API server verifies the webhook too: a client trusting another CA refuses our server
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    sink = MemorySink()
    async with running_webhook(audit_settings(tls), sink) as h:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await _post(h, tls, event_list([_event("x")]), ctx=other.client_context())
    assert not sink.events


async def test_wrong_or_missing_token_is_401(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, body = await _post(h, tls, event_list([_event("x")]), token="not-the-token")
    assert status == 401 and "token" in body["reason"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(h.url, data=event_list([_event("x")]), ssl=tls.client_context()) as resp,
    ):
        assert resp.status == 401
    assert not sink.events and h.stats.refused == 2


async def test_token_alone_authenticates_when_no_client_ca_is_set(tls: TlsFiles) -> None:
    sink = MemorySink()
    async with running_webhook(audit_settings(tls, client_ca=False), sink) as h:
        status, _ = await _post(h, tls, event_list([_event("t-1")]), ctx=tls.client_context(with_cert=False))
        assert status == 200
        status, _ = await _post(h, tls, event_list([_event("t-2")]), token="wrong", ctx=tls.client_context())
        assert status == 401
    assert len(sink.events) == 1


def test_refuses_to_start_without_any_client_authentication(tls: TlsFiles) -> None:
    with pytest.raises(WebhookConfigError, match="client authentication"):
        AuditWebhook(audit_settings(tls, client_ca=False, token=False), MemorySink())
    settings = audit_settings(tls)
    settings.tls_cert = ""
    with pytest.raises(WebhookConfigError, match="tls_cert"):
        AuditWebhook(settings, MemorySink())


async def test_oversize_body_is_413_with_the_reason_and_a_dead_letter(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    big = event_list([_event(f"big-{i}", userAgent="x" * 2000) for i in range(40)])
    assert len(big) > 64 << 10
    status, body = await _post(h, tls, big)
    assert status == 413 and "limit" in body["reason"]
    assert not sink.events
    (dead,) = _dead(sink)
    assert dead.stage == "audit.webhook" and "over the 65536-byte limit" in dead.reason
    assert dead.payload and len(dead.payload) <= 64 << 10


async def test_oversize_chunked_body_without_length_is_413(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 8192

    status, body = await _post(h, tls, chunks())
    assert status == 413 and "limit" in body["reason"]
    assert len(sink.dead) == 1 and not sink.events


async def test_malformed_json_is_400_and_the_body_goes_to_the_dlq(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, body = await _post(h, tls, b'{"kind": "EventList", "items": [')
    assert status == 400 and "not JSON" in body["reason"]
    (dead,) = _dead(sink)
    assert dead.payload == '{"kind": "EventList", "items": [' and not dead.payload_b64


async def test_binary_garbage_is_kept_base64_in_the_dlq(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, _ = await _post(h, tls, b"\xff\xfe\x00garbage")
    assert status == 400
    (dead,) = _dead(sink)
    assert dead.payload_b64 and dead.payload == "//4AZ2FyYmFnZQ=="


async def test_bad_items_are_rejected_alone_and_their_siblings_stored(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    bad_no_id = _event("")
    bad_time = _event("b-3", stageTimestamp="yesterday", requestReceivedTimestamp=None)
    status, body = await _post(h, tls, event_list([_event("b-1"), bad_no_id, _event("b-2"), bad_time, 17]))
    assert status == 400
    assert body["stored"] == 2 and body["rejected"] == 3
    assert "items[1]: $.auditID" in body["reason"] and "items[3]: $.stageTimestamp" in body["reason"]
    assert [k for k, _ in sink.events] == [b"b-1", b"b-2"]
    reasons = [d.reason for d in _dead(sink)]
    assert any("items[4]" in r for r in reasons)


async def test_an_object_that_is_not_an_audit_event_is_400(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    status, body = await _post(h, tls, b'{"kind": "Pod", "apiVersion": "v1"}')
    assert status == 400 and "not recognized as a k8s audit event" in body["reason"]
    assert len(sink.dead) == 1


async def test_sink_failure_is_503_and_nothing_is_answered_200(hook: Hook, tls: TlsFiles) -> None:
    h, sink = hook
    sink.fail = RuntimeError("broker down")
    status, body = await _post(h, tls, event_list([_event("f-1")]))
    assert status == 503 and "retry" in body["reason"]
    assert not sink.events and h.stats.publish_failures == 1
    sink.fail = None
    status, _ = await _post(h, tls, event_list([_event("f-1")]))
    assert status == 200 and len(sink.events) == 1


async def test_health_endpoint_reports_counters(hook: Hook, tls: TlsFiles) -> None:
    h, _ = hook
    await _post(h, tls, event_list([_event("h-1")]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            h.url + "healthz", ssl=tls.client_context(), headers={"Authorization": f"Bearer {tls.token}"}
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["events"] == 1


async def test_no_kafka_reachable_at_all_is_503(tls: TlsFiles) -> None:
    from cadr.kafka_local import find_free_port
    from sensors.audit.sink import KafkaSink

    sink = KafkaSink(f"127.0.0.1:{find_free_port()}", "x.raw", "x.dlq", timeout_s=2)
    async with running_webhook(audit_settings(tls), sink) as h:  # starts although Kafka is away
        status, body = await _post(h, tls, event_list([_event("nk-1")]))
    assert status == 503 and "cannot connect to Kafka" in body["reason"]
