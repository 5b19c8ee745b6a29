"""Splunk HTTP Event Collector (``POST /services/collector/event``).

A request body is the events' JSON objects one after another (HEC's batch form), each
``{"time", "host", "source", "sourcetype", "index", "event", "fields"}``. HEC answers
``{"text": "Success", "code": 0}``; on an invalid event it names the first one with
``invalid-event-number``. How each HEC code is handled:

======================  ========================================================
0                       acknowledged (with ``ack = true``: once the indexers
                        confirm the ackId on ``/services/collector/ack``)
5 6 12 13 15 (400)      the event named by ``invalid-event-number`` is dead-
                        lettered, the others sent again (without it: split)
1 2 3 4 (401/403)       token refused: retry (records are fine, config is not)
7 (400)                 index not allowed for the token: retry (config)
8 9 18 (500/503)        server error / busy / queues full: retry with backoff
10 11 14 16             channel or ack misconfigured: retry (config)
======================  ========================================================

Whether HEC indexed the events before the invalid one is not documented; they are sent
again (at-least-once), and ``fields.incident_id`` + ``fields.revision`` let a search
drop the duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson

from schemas.records import Incident
from streams.forward.base import ItemResult, Status
from streams.forward.config import DestinationConfig, SplunkOptions, read_secret
from streams.forward.errors import BatchRejectedError, TransientError
from streams.forward.http import HttpDestination, Reply, retry_after
from streams.forward.payload import Item, record_time_ns

__all__ = ["SplunkHec"]

_INVALID_EVENT_CODES = {5, 6, 12, 13, 15}
_RETRY_CODES = {8, 9, 18}
_CODE_TEXT = {
    1: "token disabled",
    2: "token is required",
    3: "invalid authorization",
    4: "invalid token",
    7: "incorrect index",
    10: "data channel is missing",
    11: "invalid data channel",
    14: "ACK is disabled",
    16: "query string authorization is not enabled",
}


class SplunkHec(HttpDestination):
    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        super().__init__(cfg, node=node)
        assert isinstance(cfg.options, SplunkOptions)
        self.opts: SplunkOptions = cfg.options
        token = read_secret(self.opts.token, self.opts.token_file, f"forward destination {cfg.name}")
        self._headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json"}
        if self.opts.channel:
            self._headers["X-Splunk-Request-Channel"] = self.opts.channel
        suffix = ":ocsf" if cfg.format == "ocsf" else ""
        self._sourcetype = self.opts.sourcetype or (
            ("cadr:incident" if cfg.records == "incidents" else "cadr:alert") + suffix
        )

    def _url(self) -> str:
        return self.opts.url + self.opts.path

    def encode(self, item: Item) -> bytes:
        event: dict[str, Any] = {
            "time": round(record_time_ns(item.record) / 1e9, 6),
            "host": self.opts.host or self.node or "cadr",
            "source": self.opts.source,
            "sourcetype": self._sourcetype,
            "event": item.payload,
        }
        if self.opts.index:
            event["index"] = self.opts.index
        if self.opts.indexed_fields:
            id_name = "incident_id" if isinstance(item.record, Incident) else "alert_id"
            event["fields"] = {
                id_name: item.key,
                "revision": str(item.revision),
                "severity": str(item.record.severity),
            }
        return orjson.dumps(event)

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        body = b"\n".join(self.wire(i) for i in items)
        reply = await self.post(self._url(), body, self._headers)
        code = reply.json.get("code") if isinstance(reply.json, dict) else None
        if reply.status == 200 and code in (0, None):
            if self.opts.ack:
                await self._wait_ack(reply)
            return None
        text = f"HEC HTTP {reply.status} code {code}"
        if isinstance(reply.json, dict) and reply.json.get("text"):
            text += f" ({reply.json['text']})"
        if code in _INVALID_EVENT_CODES and reply.status == 400:
            bad = reply.json.get("invalid-event-number") if isinstance(reply.json, dict) else None
            if isinstance(bad, int) and 0 <= bad < len(items):
                results = [ItemResult(Status.RESEND)] * len(items)
                results[bad] = ItemResult(Status.REJECT, reply.summary())
                return results
            raise BatchRejectedError(text, reply=reply.summary())
        if code in _RETRY_CODES:
            raise TransientError(
                text, reply=reply.summary(), retry_after=retry_after(reply.headers.get("Retry-After"))
            )
        if code in _CODE_TEXT:
            raise TransientError(
                f"{text}: {_CODE_TEXT[code]} (check the HEC configuration)", reply=reply.summary()
            )
        reply.raise_for_status("HEC")
        raise TransientError(text, reply=reply.summary())

    async def _wait_ack(self, reply: Reply) -> None:
        """Poll ``/services/collector/ack`` until the indexers confirm the request's ackId."""
        ack_id = reply.json.get("ackId") if isinstance(reply.json, dict) else None
        if not isinstance(ack_id, int):
            raise TransientError("HEC returned no ackId although ack = true (is useACK on for the token?)")
        url = f"{self.opts.url}/services/collector/ack?channel={self.opts.channel}"
        body = orjson.dumps({"acks": [ack_id]})
        deadline = time.monotonic() + self.opts.ack_timeout_s
        while True:
            poll = await self.post(url, body, self._headers)
            poll.raise_for_status("HEC ack")
            acks = poll.json.get("acks", {}) if isinstance(poll.json, dict) else {}
            if acks.get(str(ack_id)) is True:
                return
            if time.monotonic() >= deadline:
                # Not confirmed: the events may or may not be indexed. Send them again
                # (duplicates carry incident_id + revision) rather than risk losing them.
                raise TransientError(f"HEC ackId {ack_id} not confirmed within {self.opts.ack_timeout_s}s")
            await asyncio.sleep(self.opts.ack_poll_interval_s)
