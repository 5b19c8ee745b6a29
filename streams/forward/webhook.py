"""A generic HTTPS webhook: POST (or PUT) the payloads as JSON.

Body forms: ``array`` (a JSON array of records), ``ndjson`` (one record a line) or
``object`` (one record per request, with an ``Idempotency-Key: <id>:<revision>``
header). Replies follow the shared HTTP table in :mod:`streams.forward.http`; in
addition 409 Conflict is read as "already have it" (a duplicate), the usual answer of
an idempotent receiver to a retry.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson

from streams.forward.base import ItemResult, Status
from streams.forward.config import DestinationConfig, DestinationOptions
from streams.forward.errors import ForwardConfigError
from streams.forward.http import HttpDestination
from streams.forward.payload import Item
from streams.forward.table import Table, http_url, read_secret

__all__ = ["Webhook", "WebhookOptions"]


@dataclass(frozen=True)
class WebhookOptions(DestinationOptions):
    url: str
    method: str = "POST"
    #: array (JSON array per request), ndjson (one JSON object a line) or object (one record per request)
    body: str = "array"
    username: str = ""
    password: str = ""
    password_file: str = ""
    bearer_token: str = ""
    bearer_token_file: str = ""

    @classmethod
    def parse(cls, t: Table) -> Self:
        return cls(
            url=http_url(t),
            method=t.text("method", "POST", choices=("POST", "PUT")),
            body=t.text("body", "array", choices=("array", "ndjson", "object")),
            username=t.text("username"),
            password=t.text("password"),
            password_file=t.text("password_file"),
            bearer_token=t.text("bearer_token"),
            bearer_token_file=t.text("bearer_token_file"),
        )

    def settle(self, cfg: DestinationConfig, given: Mapping[str, Any], where: str) -> DestinationConfig:
        if self.body != "object":
            return cfg
        if "batch_size" in given and cfg.batch_size != 1:
            raise ForwardConfigError(f"{where}.batch_size: body = 'object' sends one record per request")
        return dataclasses.replace(cfg, batch_size=1)


class Webhook(HttpDestination):
    type_name = "webhook"
    options_type = WebhookOptions

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
