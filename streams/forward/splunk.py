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
from dataclasses import dataclass
from typing import Any, Self

import orjson

from schemas.records import Incident
from streams.forward.base import ItemResult, Status
from streams.forward.config import DestinationConfig, DestinationOptions
from streams.forward.errors import BatchRejectedError, ForwardConfigError, TransientError
from streams.forward.http import HttpDestination, Reply, retry_after
from streams.forward.payload import Item, record_time_ns
from streams.forward.table import Table, http_url, read_secret

__all__ = ["SplunkHec", "SplunkOptions"]


@dataclass(frozen=True)
class SplunkOptions(DestinationOptions):
    url: str
    token: str = ""
    token_file: str = ""
    path: str = "/services/collector/event"
    index: str = ""
    source: str = "cadr"
    #: default: cadr:incident / cadr:alert (with :ocsf appended for OCSF payloads)
    sourcetype: str = ""
    host: str = ""
    #: channel GUID (X-Splunk-Request-Channel); required by HEC when ack is on
    channel: str = ""
    #: wait for indexer acknowledgment before committing (HEC "useACK")
    ack: bool = False
    ack_timeout_s: float = 120.0
    ack_poll_interval_s: float = 1.0
    #: add incident_id / revision / severity as indexed fields (``fields``)
    indexed_fields: bool = True

    @classmethod
    def parse(cls, t: Table) -> Self:
        o = cls(
            url=http_url(t),
            token=t.text("token"),
            token_file=t.text("token_file"),
            path=t.text("path", "/services/collector/event"),
            index=t.text("index"),
            source=t.text("source", "cadr"),
            sourcetype=t.text("sourcetype"),
            host=t.text("host"),
            channel=t.text("channel"),
            ack=t.flag("ack", False),
            ack_timeout_s=t.number("ack_timeout_s", 120.0, lo=0.1),
            ack_poll_interval_s=t.number("ack_poll_interval_s", 1.0, lo=0.01),
            indexed_fields=t.flag("indexed_fields", True),
        )
        if not (o.token or o.token_file):
            raise ForwardConfigError(f"{t.where}: splunk_hec needs token or token_file")
        if o.ack and not o.channel:
            raise ForwardConfigError(f"{t.where}: ack = true needs a channel (a GUID)")
        return o


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
    type_name = "splunk_hec"
    options_type = SplunkOptions

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
