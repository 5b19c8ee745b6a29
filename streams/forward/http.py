"""What the HTTP destinations (HEC, bulk, webhook) share: TLS, sessions, status classes.

Status classes (one table for all HTTP destinations, so they behave alike):

========================  ===========================================================
2xx                       acknowledged
408 425 429 5xx           transient: retry after a backoff (``Retry-After`` honoured)
401 403 404 405 407 415   transient: the destination or its credentials are wrong; the
                          records are fine, so they wait (and the error shows in metrics)
400 413 422 other 4xx     the request is refused for its content: split it, and
                          dead-letter the record that is refused on its own
========================  ===========================================================
"""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any

import aiohttp
import orjson

from streams.forward.base import Destination
from streams.forward.config import TlsConfig
from streams.forward.errors import BatchRejectedError, TransientError

__all__ = ["HttpDestination", "Reply", "classify", "retry_after", "ssl_context"]

_TRANSIENT = {408, 425, 429}
_CONFIG = {401, 403, 404, 405, 407, 415}
_MAX_REPLY_CHARS = 4096


def ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """A client TLS context: the configured CA (else the system's), a client certificate for mTLS."""
    tls = tls or TlsConfig()
    ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    return ctx


def classify(status: int) -> str:
    """``ok`` | ``transient`` | ``config`` | ``reject`` for an HTTP status (see the module table)."""
    if 200 <= status < 300:
        return "ok"
    if status in _TRANSIENT or status >= 500:
        return "transient"
    if status in _CONFIG:
        return "config"
    return "reject"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Reply:
    """A destination's HTTP answer, kept small enough for logs and dead letters."""

    __slots__ = ("body", "headers", "json", "status")

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            self.json = None

    def summary(self) -> dict[str, Any]:
        """``{"status": ..., "body": ...}`` with the body parsed when it is JSON, else text (truncated)."""
        if self.json is not None:
            body: Any = self.json
            if len(self.body) > _MAX_REPLY_CHARS:
                body = self.body[:_MAX_REPLY_CHARS].decode("utf-8", "replace") + "..."
        else:
            body = self.body[:_MAX_REPLY_CHARS].decode("utf-8", "replace")
        return {"status": self.status, "body": body}

    def raise_for_status(self, what: str) -> None:
        """Raise the delivery error the status class calls for (nothing on 2xx)."""
        kind = classify(self.status)
        if kind == "ok":
            return
        msg = f"{what}: HTTP {self.status}"
        if kind == "transient":
            raise TransientError(
                msg, reply=self.summary(), retry_after=retry_after(self.headers.get("Retry-After"))
            )
        if kind == "config":
            raise TransientError(msg + " (check the URL and credentials)", reply=self.summary())
        raise BatchRejectedError(msg, reply=self.summary())


class HttpDestination(Destination):
    """A destination reached over HTTP(S) with one pooled aiohttp session."""

    session: aiohttp.ClientSession | None = None

    def _url(self) -> str:
        raise NotImplementedError

    async def start(self) -> None:
        if self.session is not None:
            return
        ssl_arg: ssl.SSLContext | bool = True
        if self._url().startswith("https://") or self.cfg.tls is not None:
            ssl_arg = ssl_context(self.cfg.tls)
        connector = aiohttp.TCPConnector(limit=max(2, self.cfg.concurrency * 2), ssl=ssl_arg)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, method: str = "POST") -> Reply:
        """One request; network failures and timeouts become :class:`TransientError`."""
        if self.session is None:
            await self.start()
        assert self.session is not None
        all_headers = {**headers, **dict(self.cfg.headers)}
        tls_name = self.cfg.tls.server_name if self.cfg.tls else ""
        try:
            async with self.session.request(
                method, url, data=body, headers=all_headers, server_hostname=tls_name or None
            ) as resp:
                data = await resp.read()
                return Reply(resp.status, data, resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"{self.cfg.type} {self.describe()}: {type(exc).__name__}: {exc}") from exc

    def describe(self) -> str:
        return self._url()
