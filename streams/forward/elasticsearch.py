"""Elasticsearch / OpenSearch ``_bulk`` API.

Each record is a ``create`` action with ``_id = <incident_id>:<revision>``, so a retry
of a record that did arrive is answered 409 (version conflict) and counted as a
duplicate instead of stored twice; ``create`` is also the only action data streams
accept. Per-item replies: 200/201 acknowledged, 409 duplicate, 429 and 5xx retried,
any other 4xx (mapping errors, ...) dead-lettered with the item's ``error`` object.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote

import orjson

from streams.forward.base import OK, ItemResult, Status
from streams.forward.config import DestinationConfig, DestinationOptions
from streams.forward.errors import ForwardConfigError, TransientError
from streams.forward.http import HttpDestination
from streams.forward.payload import Item, record_time_ns, rfc3339
from streams.forward.table import Table, http_url, read_secret

__all__ = ["ElasticOptions", "Elasticsearch"]


@dataclass(frozen=True)
class ElasticOptions(DestinationOptions):
    url: str
    #: index or data stream; strftime patterns (``cadr-%Y.%m.%d``) use the record's first_seen (UTC)
    index: str = "cadr-incidents"
    pipeline: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    api_key: str = ""
    api_key_file: str = ""
    #: field added with the record's time in RFC 3339 (empty = none)
    timestamp_field: str = "@timestamp"

    @classmethod
    def parse(cls, t: Table) -> Self:
        index = t.text("index", "cadr-incidents")
        literal = re.sub(r"%.", "", index)  # strftime directives are filled (and lowercased) per record
        if not index or literal != literal.lower() or any(c in literal for c in ' "*\\<|,>/?#:'):
            raise ForwardConfigError(
                f'{t.where}.index: {index!r} is not a valid index name (lowercase, no spaces or "*\\<|,>/?#:)'
            )
        return cls(
            url=http_url(t),
            index=index,
            pipeline=t.text("pipeline"),
            username=t.text("username"),
            password=t.text("password"),
            password_file=t.text("password_file"),
            api_key=t.text("api_key"),
            api_key_file=t.text("api_key_file"),
            timestamp_field=t.text("timestamp_field", "@timestamp"),
        )


class Elasticsearch(HttpDestination):
    type_name = "elasticsearch"
    options_type = ElasticOptions

    independent_items = True

    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        super().__init__(cfg, node=node)
        assert isinstance(cfg.options, ElasticOptions)
        self.opts: ElasticOptions = cfg.options
        where = f"forward destination {cfg.name}"
        self._headers = {"Content-Type": "application/x-ndjson"}
        api_key = read_secret(self.opts.api_key, self.opts.api_key_file, where)
        password = read_secret(self.opts.password, self.opts.password_file, where)
        if api_key:
            self._headers["Authorization"] = f"ApiKey {api_key}"
        elif self.opts.username:
            creds = base64.b64encode(f"{self.opts.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {creds}"
        self._bulk_url = f"{self.opts.url}/_bulk"
        if self.opts.pipeline:
            self._bulk_url += f"?pipeline={quote(self.opts.pipeline)}"
        self._dated = "%" in self.opts.index

    def _url(self) -> str:
        return self.opts.url

    def index_for(self, item: Item) -> str:
        if not self._dated:
            return self.opts.index
        first = getattr(item.record, "first_seen", 0) or record_time_ns(item.record)
        return datetime.fromtimestamp(first / 1e9, tz=UTC).strftime(self.opts.index).lower()

    def encode(self, item: Item) -> bytes:
        action = {"create": {"_index": self.index_for(item), "_id": item.dedup_id}}
        doc = item.payload
        if self.opts.timestamp_field and self.opts.timestamp_field not in doc:
            doc = {self.opts.timestamp_field: rfc3339(record_time_ns(item.record)), **doc}
        return orjson.dumps(action) + b"\n" + orjson.dumps(doc) + b"\n"

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        body = b"".join(self.wire(i) for i in items)
        reply = await self.post(self._bulk_url, body, self._headers)
        reply.raise_for_status("bulk")
        data = reply.json
        if not isinstance(data, dict) or "items" not in data:
            raise TransientError(f"bulk: HTTP {reply.status} without an items array", reply=reply.summary())
        if not data.get("errors"):
            return None
        replies = data["items"]
        if not isinstance(replies, list) or len(replies) != len(items):
            count = len(replies) if isinstance(replies, list) else "no"
            raise TransientError(
                f"bulk: {count} item replies for {len(items)} actions",
                reply=reply.summary(),
            )
        return [_item_result(r) for r in replies]


def _item_result(entry: Any) -> ItemResult:
    if not isinstance(entry, dict) or not entry:
        return ItemResult(Status.RETRY, {"error": "malformed bulk item reply", "item": entry})
    detail = next(iter(entry.values()))
    status = detail.get("status", 0) if isinstance(detail, dict) else 0
    if 200 <= status < 300:
        return OK
    if status == 409:
        return ItemResult(Status.DUPLICATE)
    reply = {"status": status, "error": detail.get("error") if isinstance(detail, dict) else None}
    if status == 429 or status >= 500 or status == 0:
        return ItemResult(Status.RETRY, reply)
    return ItemResult(Status.REJECT, reply)
