"""A generic HTTPS webhook: POST (or PUT) the payloads as JSON.

Body forms: ``array`` (a JSON array of records), ``ndjson`` (one record a line) or
``object`` (one record per request, with an ``Idempotency-Key: <id>:<revision>``
header). Replies follow the shared HTTP table in :mod:`streams.forward.http`; in
addition 409 Conflict is read as "already have it" (a duplicate), the usual answer of
an idempotent receiver to a retry.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import orjson

from streams.forward.base import ItemResult, Status
from streams.forward.config import DestinationConfig, WebhookOptions, read_secret
from streams.forward.http import HttpDestination
from streams.forward.payload import Item

__all__ = ["Webhook"]


class Webhook(HttpDestination):
    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        super().__init__(cfg, node=node)
        assert isinstance(cfg.options, WebhookOptions)
        self.opts: WebhookOptions = cfg.options
        where = f"forward destination {cfg.name}"
        content_type = "application/x-ndjson" if self.opts.body == "ndjson" else "application/json"
        self._headers = {"Content-Type": content_type, "User-Agent": "cadr-forward"}
        token = read_secret(self.opts.bearer_token, self.opts.bearer_token_file, where)
        password = read_secret(self.opts.password, self.opts.password_file, where)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif self.opts.username:
            creds = base64.b64encode(f"{self.opts.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {creds}"

    def _url(self) -> str:
        return self.opts.url

    def encode(self, item: Item) -> bytes:
        return orjson.dumps(item.payload)

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        headers = dict(self._headers)
        parts = [self.wire(i) for i in items]
        if self.opts.body == "ndjson":
            body = b"\n".join(parts) + b"\n"
        elif self.opts.body == "object" and len(items) == 1:
            body = parts[0]
            headers["Idempotency-Key"] = items[0].dedup_id
        else:
            body = b"[" + b",".join(parts) + b"]"
        reply = await self.post(self.opts.url, body, headers, method=self.opts.method)
        if reply.status == 409:
            return [ItemResult(Status.DUPLICATE)] * len(items)
        reply.raise_for_status("webhook")
        return None
