"""Issue 13, findings 5 and 6: the audit webhook fails per event, and a caller cannot hold it.

The real webhook over TLS with client certificates on loopback, driven with raw sockets where a well-behaved
client library would not misbehave (half requests, idle connections). Before the change: a 1,000-deep
``requestObject`` cost the whole batch (500, nothing in the DLQ); a gzip body with a wrong token was
decompressed anyway; half-sent requests and half TLS handshakes stayed open; there was no connection cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from schemas.records import DeadLetter
from schemas.settings import AuditSettings
from sensors.audit.sink import MemorySink
from sensors.audit.webhook import AuditWebhook
from tests.sensors.audit.support import TlsFiles, audit_settings, event_list, make_tls, running_webhook
from tests.sensors.audit.test_webhook import _event

Hook = tuple[AuditWebhook, MemorySink]


def _settings(tls: TlsFiles, **limits: Any) -> AuditSettings:
    settings = audit_settings(tls, max_body_bytes=64 << 10)
    for name, value in limits.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path)


@pytest.fixture
async def hook(tls: TlsFiles) -> AsyncIterator[Hook]:
    sink = MemorySink()
    settings = _settings(tls, header_timeout_s=1.0, body_timeout_s=1.0, max_connections=3)
    async with running_webhook(settings, sink, cluster="c1", node="n1") as h:
        yield h, sink


def _dead(sink: MemorySink) -> list[DeadLetter]:
    return [msgspec.json.decode(v, type=DeadLetter) for _, v in sink.dead]


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"{}" + b"}" * levels


def _with_request_object(event: dict[str, Any], obj: bytes) -> bytes:
    return orjson.dumps(event)[:-1] + b',"requestObject":' + obj + b"}"


def _connect(hook: AuditWebhook, tls: TlsFiles) -> ssl.SSLSocket:
    """A TLS connection with the API server's client certificate (blocking, 10 s socket timeout)."""
    raw = socket.create_connection(("127.0.0.1", hook.port), timeout=10)
    return tls.client_context().wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_server(sock: socket.socket, deadline_s: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection (fails past the deadline)."""
    sock.settimeout(0.5)
    got = b""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the server kept the connection open for {deadline_s:g} s (got {got[:80]!r})")


async def _post_raw(hook: AuditWebhook, tls: TlsFiles, body: bytes, headers: dict[str, str]) -> bytes:
    """POST over a raw TLS socket; returns the server's whole answer (the server may close mid-body)."""

    def run() -> bytes:
        sock = _connect(hook, tls)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
        # (the server may refuse before the body is all sent: then read its answer)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            sock.sendall(request + body)
        try:
            return _closed_by_server(sock)
        finally:
            sock.close()

    return await asyncio.to_thread(run)


async def test_a_deep_request_object_is_dead_lettered_and_its_siblings_stored(
    hook: Hook, tls: TlsFiles
) -> None:
    h, sink = hook
    deep = _with_request_object(_event("deep-1", verb="create"), _deep(1000))
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":['
    body += orjson.dumps(_event("ok-1")) + b"," + deep + b"," + orjson.dumps(_event("ok-2")) + b"]}"
    answer = await _post_raw(h, tls, body, {"Authorization": f"Bearer {tls.token}"})
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert [k for k, _ in sink.events] == [b"ok-1", b"ok-2"]
    (dead,) = _dead(sink)
    assert dead.reason.startswith("items[1]: nested 1002 levels deep") and "deep-1" in dead.payload


async def test_deep_events_in_blocking_mode_and_in_lists_fail_alone(tls: TlsFiles) -> None:
    """The same through the whole-body paths: one deep Event, a list of only deep items, a wrong type."""
    from sensors.audit.batch import process_body

    single = process_body(_with_request_object(_event("d-1"), _deep(5000)))
    assert not single.events and single.malformed and "nested" in single.errors[0]
    items = [_with_request_object(_event(f"d-{i}"), _deep(300)) for i in range(3)]
    listed = process_body(b'{"kind":"EventList","items":[' + b",".join(items) + b',"text",17]}')
    assert not listed.events and len(listed.dead) == 5
    ok = process_body(event_list([_event("s-1"), {**_event("s-2"), "verb": 7}]))
    assert [k for k, _ in ok.events] == [b"s-1"] and "items[1]" in ok.errors[0]


class _InflateSpy:
    """Counts bytes inflated by every zlib decompressor (aiohttp's and cadr's both make them here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inflated = 0
        real: Callable[..., Any] = zlib.decompressobj
        spy = self

        class Wrapped:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._d = real(*args, **kwargs)

            def decompress(self, data: Any, max_length: int = 0) -> bytes:
                out: bytes = self._d.decompress(data, max_length)
                spy.inflated += len(out)
                return out

            def flush(self, *args: Any) -> bytes:
                out: bytes = self._d.flush(*args)
                spy.inflated += len(out)
                return out

            def __getattr__(self, name: str) -> Any:
                return getattr(self._d, name)

        monkeypatch.setattr(zlib, "decompressobj", Wrapped)


def _bomb(mib: int) -> bytes:
    return gzip.compress(b"\0" * (mib << 20), compresslevel=9)


async def test_a_gzip_body_is_not_decompressed_before_the_token_is_checked(
    hook: Hook, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, sink = hook
    spy = _InflateSpy(monkeypatch)
    bomb = _bomb(48)
    answer = await _post_raw(
        h,
        tls,
        bomb,
        {"Authorization": "Bearer wrong", "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert spy.inflated == 0, f"{spy.inflated} bytes inflated for an unauthenticated request"
    assert not sink.events and not sink.dead


async def test_a_gzip_bomb_stops_at_the_decompressed_limit(
    hook: Hook, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, sink = hook
    spy = _InflateSpy(monkeypatch)
    answer = await _post_raw(
        h, tls, _bomb(48), {"Authorization": f"Bearer {tls.token}", "Content-Encoding": "gzip"}
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert spy.inflated <= (64 << 10) + 1
    (dead,) = _dead(sink)
    assert "decompressed body is over the 65536-byte limit" in dead.reason
    # and an honest gzip body goes through
    good = gzip.compress(event_list([_event("gz-1")]))
    answer = await _post_raw(
        h, tls, good, {"Authorization": f"Bearer {tls.token}", "Content-Encoding": "gzip"}
    )
    assert answer.startswith(b"HTTP/1.1 200") and [k for k, _ in sink.events] == [b"gz-1"]


async def test_half_sent_requests_over_tls_are_closed(hook: Hook, tls: TlsFiles) -> None:
    h, _ = hook

    def half_head() -> bytes:
        with _connect(h, tls) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
            return _closed_by_server(sock)

    def half_body() -> bytes:
        with _connect(h, tls) as sock:
            head = f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tls.token}\r\nContent-Length: 1000\r\n\r\n"
            sock.sendall(head.encode() + b'{"kind":')
            return _closed_by_server(sock)

    def half_handshake() -> bytes:
        with socket.create_connection(("127.0.0.1", h.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and nothing more
            return _closed_by_server(sock)

    assert await asyncio.to_thread(half_head) == b""
    assert (await asyncio.to_thread(half_body)).startswith(b"HTTP/1.1 408")
    assert await asyncio.to_thread(half_handshake) == b""


async def test_connections_past_the_cap_are_answered_busy(tls: TlsFiles) -> None:
    sink = MemorySink()
    # a long header timeout: the held connections must not be closed for idling before the extra one comes
    settings = _settings(tls, header_timeout_s=30.0, body_timeout_s=5.0, max_connections=3)
    async with running_webhook(settings, sink) as h:

        def over_the_cap() -> bytes:
            held = [_connect(h, tls) for _ in range(3)]
            try:
                with _connect(h, tls) as extra:
                    return _closed_by_server(extra)
            finally:
                for sock in held:
                    sock.close()

        refused = await asyncio.to_thread(over_the_cap)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        # once the held connections are gone, requests are served again
        deadline = time.monotonic() + 20
        while True:
            body = event_list([_event("after-1")])
            answer = await _post_raw(h, tls, body, {"Authorization": f"Bearer {tls.token}"})
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200") and [k for k, _ in sink.events] == [b"after-1"]
