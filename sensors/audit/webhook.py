"""HTTPS receiver for the kube-apiserver audit webhook backend (``--audit-webhook-config-file``).

The API server POSTs ``audit.k8s.io/v1`` ``EventList`` documents (batch mode, the default) or single
``Event`` documents (``--audit-webhook-mode=blocking``) as JSON. This server:

1. authenticates the caller before reading any of the body: TLS with a required client certificate when
   ``client_ca`` is set, and/or a bearer token from ``token_file`` (constant-time compare). It refuses to
   start with neither unless the caller explicitly asks for an unauthenticated server;
2. bounds what a caller can hold (:mod:`sensors.audit.transport`): ``max_connections`` open connections,
   ``header_timeout_s`` for the TLS handshake and each request head, ``body_timeout_s`` for the body, and
   ``max_body_bytes`` for the body both as sent and decompressed (checked while it streams in; 413);
3. validates and normalizes each event on its own (:mod:`sensors.audit.batch`): bad items — too deep, too
   large, not JSON, wrong types — go to ``cadr.dlq`` with the reason, their good siblings go through;
4. publishes the whole batch to ``cadr.raw`` and answers 200 only after Kafka acknowledged every record
   (acks=all). If Kafka does not, it answers 503 and the API server retries the batch; event ids come
   from auditID + stage, so a retried batch is idempotent downstream.

Status codes: 200 all stored; 400 malformed body or some events rejected (those are in the DLQ, the rest
stored — the API server does not retry 4xx, so nothing is duplicated); 401 bad or missing token;
408 body not received in time; 413 body over the limit; 415 unknown Content-Encoding; 503 Kafka did not
acknowledge, or too many connections.
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

import orjson
from aiohttp import web

from schemas.codec import dead_letter, encode
from schemas.settings import AuditSettings
from sensors.audit.batch import STAGE, BatchResult, process_body
from sensors.audit.errors import PublishError, WebhookConfigError
from sensors.audit.normalize import PodLookup
from sensors.audit.sink import Sink
from sensors.audit.transport import BodyError, CappedServer, read_body, server_options

__all__ = [
    "AuditWebhook",
    "BatchResult",
    "WebhookStats",
    "build_ssl_context",
    "process_body",
    "serve_forever",
]

log = logging.getLogger(__name__)

_MAX_ERRORS_IN_REPLY = 20


@dataclass
class WebhookStats:
    """Counters since start (reported in sensor health and on GET /healthz)."""

    requests: int = 0
    events: int = 0
    rejected: int = 0
    refused: int = 0
    publish_failures: int = 0
    #: connections answered 503 because ``max_connections`` were open
    connections_refused: int = 0
    #: requests whose body did not arrive within ``body_timeout_s``
    body_timeouts: int = 0


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
        self._server: CappedServer | None = None
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port: int = settings.port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        await self.sink.start()
        settings = self.settings
        self._server = CappedServer(
            self._dispatch,
            max_connections=settings.max_connections,
            **server_options(settings.header_timeout_s),
        )
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        await self._runner.setup()
        # Our own listener (not aiohttp's TCPSite) so that a TLS handshake has the header deadline too.
        self._listener = await asyncio.get_running_loop().create_server(
            self._server,
            settings.host,
            settings.port,
            ssl=self._ssl,
            ssl_handshake_timeout=settings.header_timeout_s if self._ssl is not None else None,
            backlog=128,
            reuse_address=True,
        )
        if self._listener.sockets:
            self.port = self._listener.sockets[0].getsockname()[1]
        log.info("audit webhook listening on %s", self.url)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.sink.stop()

    def _authorized(self, request: web.BaseRequest) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path in ("/", "/audit"):
            if request.method != "POST":
                return _reply(405, "POST audit events here", close=True)
            return await self._handle(request)
        if request.path == "/healthz" and request.method == "GET":
            return await self._health(request)
        return _reply(404, "not found", close=True)

    async def _health(self, request: web.BaseRequest) -> web.Response:
        if not self._authorized(request):
            return _reply(401, "missing or wrong bearer token", close=True)
        if self._server is not None:
            self.stats.connections_refused = self._server.refused
        return web.json_response(self.stats.__dict__)

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        self.stats.requests += 1
        if not self._authorized(request):
            self.stats.refused += 1
            # Close: the body (maybe a compression bomb) is never read, let alone decompressed.
            return _reply(401, "missing or wrong bearer token", close=True)
        try:
            body = await read_body(
                request, limit=self.settings.max_body_bytes, timeout_s=self.settings.body_timeout_s
            )
        except BodyError as exc:
            return await self._refuse_body(exc)
        result = process_body(
            body,
            cluster=self.cluster,
            node=self.node,
            pods=self.pods,
            max_event_bytes=self.settings.max_event_bytes,
        )
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

    async def _refuse_body(self, exc: BodyError) -> web.Response:
        """A body over a limit, too slow, or undecodable: a dead letter with the reason, and close."""
        self.stats.rejected += 1
        if exc.status == 408:
            self.stats.body_timeouts += 1
        try:
            await self.sink.publish(
                [], [(b"", encode(dead_letter(exc.prefix, stage=STAGE, reason=exc.reason)))]
            )
        except PublishError as err:
            log.warning("could not record a refused body in the DLQ: %s", err)
        # Close the connection: the unread remainder of the body must not be parsed as a request.
        return _reply(exc.status, exc.reason, close=True)


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
