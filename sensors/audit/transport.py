"""The webhook's HTTP defences: a connection cap, header and body timeouts, and a bounded, streamed body decode.

aiohttp on its own (as the webhook used it) decompressed a gzip body in its parser as the bytes arrived —
before the handler could look at the bearer token — and, after an early reply, kept reading and decompressing
the rest of the body for up to 10 s ("lingering"); a connection that sent half a request stayed open for an
hour (its keep-alive timeout), and nothing capped the number of connections. Here:

- :class:`CappedServer` answers connections past ``max_connections`` with a 503 and closes them at once;
- the server is built with ``auto_decompress=False`` (the body arrives as sent), ``lingering_time=0`` (a body
  the handler did not read closes the connection instead of being drained) and a keep-alive timeout equal to
  the header timeout: a connection that has not sent a whole request head within it is closed (the TLS
  handshake has the same deadline, see :func:`server_options`);
- :func:`read_body` reads the body only once the caller is authenticated, within ``body_timeout_s``, and
  decodes gzip/deflate in steps of at most the remaining budget, so a compression bomb stops at ``limit``
  decoded bytes (it never inflates further).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from sensors.audit.errors import AuditError

__all__ = ["BodyError", "CappedServer", "read_body", "server_options"]

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
)
_CHUNK = 1 << 16


class BodyError(AuditError):
    """The body could not be read within the limits; ``status`` is the HTTP answer, ``prefix`` what was read."""

    def __init__(self, status: int, reason: str, prefix: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.prefix = prefix


def server_options(header_timeout_s: float) -> dict[str, Any]:
    """aiohttp request-handler options for a server that reads nothing it has not decided to read."""
    return {
        "keepalive_timeout": header_timeout_s,
        "lingering_time": 0,
        "auto_decompress": False,
        "access_log": None,
    }


class CappedServer(web.Server):
    """aiohttp's low-level server with a cap on open connections (past it: 503, then close)."""

    def __init__(self, handler: Any, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        #: connections answered 503 because the cap was reached
        self.refused = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "audit webhook: %d connections refused (cap %d)", self.refused, self.max_connections
                )
            transport.write(_BUSY)
            transport.close()
            return  # not registered: its connection_lost finds nothing to remove
        super().connection_made(handler, transport)


async def read_body(request: web.BaseRequest, *, limit: int, timeout_s: float) -> bytes:
    """The decoded body, at most ``limit`` bytes both as sent and decoded, read within ``timeout_s``."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or raw gzip header, as browsers send
    else:
        raise BodyError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    length = request.content_length
    try:
        async with asyncio.timeout(timeout_s):
            if length is not None and length > limit:
                # Keep the start (as sent) for the dead letter, so an operator can see what it was.
                prefix = await request.content.read(min(length, _CHUNK))
                raise BodyError(413, f"body of {length} bytes is over the {limit}-byte limit", prefix)
            return await _read(request, decoder, limit)
    except TimeoutError as exc:
        raise BodyError(408, f"body not received within {timeout_s:g} s") from exc


async def _read(request: web.BaseRequest, decoder: Any, limit: int) -> bytes:
    parts: list[bytes] = []
    sent = decoded = 0
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            break
        sent += len(chunk)
        if sent > limit:
            raise BodyError(413, f"body is over the {limit}-byte limit", b"".join(parts)[:_CHUNK])
        if decoder is None:
            parts.append(chunk)
            continue
        data = chunk
        while data:
            try:
                out = decoder.decompress(data, limit - decoded + 1)
            except zlib.error as exc:
                raise BodyError(400, f"compressed body is not valid: {exc}") from exc
            decoded += len(out)
            if decoded > limit:
                raise BodyError(
                    413, f"decompressed body is over the {limit}-byte limit", b"".join(parts)[:_CHUNK]
                )
            parts.append(out)
            data = decoder.unconsumed_tail
    if decoder is not None:
        tail = decoder.flush(limit - decoded + 1)
        if decoded + len(tail) > limit:
            raise BodyError(
                413, f"decompressed body is over the {limit}-byte limit", b"".join(parts)[:_CHUNK]
            )
        parts.append(tail)
        if not decoder.eof:
            raise BodyError(400, "compressed body is truncated")
    return b"".join(parts)
