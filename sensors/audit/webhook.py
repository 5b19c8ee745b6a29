"""HTTPS receiver for the kube-apiserver audit webhook backend (``--audit-webhook-config-file``).

The API server POSTs ``audit.k8s.io/v1`` ``EventList`` documents (batch mode, the default) or single
``Event`` documents (``--audit-webhook-mode=blocking``) as JSON. This server:

1. authenticates the caller: TLS with a required client certificate when ``client_ca`` is set, and/or a
   bearer token from ``token_file`` (constant-time compare). It refuses to start with neither unless the
   caller explicitly asks for an unauthenticated server;
2. bounds the body (``max_body_bytes``; 413 before reading more);
3. validates and normalizes each event on its own: bad items go to ``cadr.dlq`` with the reason, their
   good siblings go through;
4. publishes the whole batch to ``cadr.raw`` and answers 200 only after Kafka acknowledged every record
   (acks=all). If Kafka does not, it answers 503 and the API server retries the batch; event ids come
   from auditID + stage, so a retried batch is idempotent downstream.

Status codes: 200 all stored; 400 malformed body or some events rejected (those are in the DLQ, the rest
stored — the API server does not retry 4xx, so nothing is duplicated); 401 bad or missing token;
413 body over the limit; 503 Kafka did not acknowledge.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import web

from schemas.codec import dead_letter, encode
from schemas.settings import AuditSettings
from sensors.audit.envelope import unwrap
from sensors.audit.errors import AuditFormatError, PublishError, WebhookConfigError
from sensors.audit.fastpath import decode_event_list, normalize_typed
from sensors.audit.normalize import PodLookup, normalize
from sensors.audit.sink import Record, Sink

__all__ = [
    "AuditWebhook",
    "BatchResult",
    "WebhookStats",
    "build_ssl_context",
    "process_body",
    "serve_forever",
]

log = logging.getLogger(__name__)

STAGE = "audit.webhook"
_MAX_ERRORS_IN_REPLY = 20


@dataclass
class WebhookStats:
    """Counters since start (reported in sensor health and on GET /healthz)."""

    requests: int = 0
    events: int = 0
    rejected: int = 0
    refused: int = 0
    publish_failures: int = 0


@dataclass
class BatchResult:
    """What one body turned into: records for cadr.raw and cadr.dlq, and the reasons for the DLQ ones."""

    events: list[Record]
    dead: list[Record]
    errors: list[str]
    malformed: bool = False


def process_body(
    body: bytes,
    *,
    cluster: str = "",
    node: str = "",
    pods: PodLookup | None = None,
    stage: str = STAGE,
) -> BatchResult:
    """Parse, validate and normalize one webhook body (pure: no I/O). Never raises on bad input."""
    fast = _fast_path(body, cluster=cluster, node=node, pods=pods)
    if fast is not None:
        return fast
    result = BatchResult([], [], [])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = f"body is not JSON: {exc}"
        result.malformed = True
        result.errors.append(reason)
        result.dead.append((b"", encode(dead_letter(body, stage=stage, reason=reason))))
        return result
    try:
        items = unwrap(doc)
    except AuditFormatError as exc:
        reason = f"body is not an audit.k8s.io Event or EventList: {exc}"
        result.malformed = True
        result.errors.append(reason)
        result.dead.append((b"", encode(dead_letter(body, stage=stage, reason=reason))))
        return result
    for index, item in enumerate(items):
        try:
            event = normalize(item, cluster=cluster, node=node, pods=pods)
        except Exception as exc:  # AuditFormatError, or a bug: either way one item must not poison the batch
            where = "event" if doc is item else f"items[{index}]"
            reason = (
                f"{where}: {exc}"
                if isinstance(exc, AuditFormatError)
                else f"{where}: cannot normalize: {exc!r}"
            )
            if not isinstance(exc, AuditFormatError):
                log.exception("normalizing an audit event failed")
            result.errors.append(reason)
            result.dead.append((b"", encode(dead_letter(item, stage=stage, reason=reason))))
            continue
        assert event.audit is not None
        result.events.append((event.audit.audit_id.encode(), encode(event)))
    return result


def _fast_path(body: bytes, *, cluster: str, node: str, pods: PodLookup | None) -> BatchResult | None:
    """An EventList whose every item is valid, through the typed decoder; None to take the dict path."""
    try:
        items = decode_event_list(body)
        if items is None:
            return None
        events = [normalize_typed(raw, cluster=cluster, node=node, pods=pods) for raw in items]
    except (msgspec.DecodeError, ValueError):  # AuditFormatError is a ValueError, so is orjson's error
        return None  # the dict path names exactly what is wrong, item by item
    return BatchResult(
        [(e.audit.audit_id.encode(), encode(e)) for e in events if e.audit is not None], [], []
    )


def build_ssl_context(settings: AuditSettings) -> ssl.SSLContext:
    """Server TLS context; with ``client_ca`` a client certificate signed by it is required."""
    if not settings.tls_cert or not settings.tls_key:
        raise WebhookConfigError(
            "the audit webhook needs tls_cert and tls_key (the API server only speaks HTTPS)"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.client_ca:
            ctx.load_verify_locations(cafile=settings.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise WebhookConfigError(f"cannot load the webhook TLS material: {exc}") from exc
    return ctx


def _read_token(path: str) -> bytes:
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise WebhookConfigError(f"cannot read token_file {path}: {exc}") from exc
    if not token:
        raise WebhookConfigError(f"token_file {path} is empty")
    return token


class AuditWebhook:
    """The webhook server. ``await start()``, then POST to ``https://host:port/`` (or ``/audit``)."""

    def __init__(
        self,
        settings: AuditSettings,
        sink: Sink,
        *,
        cluster: str = "",
        node: str = "",
        pods: PodLookup | None = None,
        allow_unauthenticated: bool = False,
        allow_plain_http: bool = False,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.cluster = cluster
        self.node = node
        self.pods = pods
        self.stats = WebhookStats()
        self._token = _read_token(settings.token_file) if settings.token_file else None
        if self._token is None and not settings.client_ca and not allow_unauthenticated:
            raise WebhookConfigError(
                "the audit webhook needs client authentication: set audit.client_ca (client certificates) "
                "and/or audit.token_file (bearer token)"
            )
        self._ssl = None if allow_plain_http else build_ssl_context(settings)
        if self._ssl is None and self._token is not None:
            log.warning("bearer token over plain HTTP: only for local tests")
        self._runner: web.AppRunner | None = None
        self.port: int = settings.port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"

    def make_app(self) -> web.Application:
        # The body limit is enforced in the handler (streamed), not by aiohttp's client_max_size,
        # so an oversize body is refused before it is buffered and the reason reaches the DLQ.
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1)
        app.router.add_post("/", self._handle)
        app.router.add_post("/audit", self._handle)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self) -> None:
        await self.sink.start()
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=self._ssl, backlog=128
        )
        await site.start()
        server: Any = site._server  # aiohttp keeps the asyncio.Server here; it knows the bound port
        sockets = server.sockets if server is not None else []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("audit webhook listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.sink.stop()

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)

    async def _health(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _reply(401, "missing or wrong bearer token")
        return web.json_response(self.stats.__dict__)

    async def _handle(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        if not self._authorized(request):
            self.stats.refused += 1
            return _reply(401, "missing or wrong bearer token")
        limit = self.settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            reason = f"body of {length} bytes is over the {limit}-byte limit"
            return await self._refuse_oversize(reason, await request.content.read(min(length, 64 << 10)))
        body = await _read_bounded(request, limit)
        if body is None:
            reason = f"body is over the {limit}-byte limit"
            return await self._refuse_oversize(reason, b"")
        result = process_body(body, cluster=self.cluster, node=self.node, pods=self.pods)
        try:
            await self.sink.publish(result.events, result.dead)
        except PublishError as exc:
            self.stats.publish_failures += 1
            log.warning("audit batch not stored (%d events): %s", len(result.events), exc)
            return _reply(503, f"not stored, retry: {exc}")
        self.stats.events += len(result.events)
        self.stats.rejected += len(result.dead)
        if result.errors:
            reasons = "; ".join(result.errors[:_MAX_ERRORS_IN_REPLY])
            return _reply(
                400,
                f"stored {len(result.events)} events; rejected {len(result.dead)} (in the DLQ): {reasons}",
                stored=len(result.events),
                rejected=len(result.dead),
            )
        return web.json_response({"stored": len(result.events), "rejected": 0})

    async def _refuse_oversize(self, reason: str, prefix: bytes) -> web.Response:
        self.stats.rejected += 1
        try:
            await self.sink.publish([], [(b"", encode(dead_letter(prefix, stage=STAGE, reason=reason)))])
        except PublishError as exc:
            log.warning("could not record an oversize body in the DLQ: %s", exc)
        # Close the connection: the unread remainder of the body must not be parsed as a request.
        return _reply(413, reason, close=True)


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` (chunked bodies have no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def _reply(status: int, reason: str, *, close: bool = False, **extra: Any) -> web.Response:
    body = orjson.dumps({"status": status, "reason": reason, **extra})
    headers = {"Connection": "close"} if close else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def serve_forever(webhooks: Sequence[AuditWebhook], stop: asyncio.Event) -> None:
    """Run until ``stop`` is set (used by ``cadr sensor audit``)."""
    for w in webhooks:
        await w.start()
    try:
        await stop.wait()
    finally:
        for w in webhooks:
            await w.stop()
