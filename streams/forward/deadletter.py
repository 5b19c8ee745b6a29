"""Per-destination dead-letter topics: records a destination refused, with its reply.

A dead letter is written with ``acks=all`` before the offsets that cover it are
committed, and writing one is retried until Kafka takes it: a refused record is moved,
never dropped. Each value is a JSON object::

    {"destination": "splunk", "type": "splunk_hec", "reason": "...", "reply": {...},
     "dedup_id": "<id>:<revision>", "source": {"topic": ..., "partition": ..., "offset": ...},
     "time": <ns>, "record": {...the original record...}}

``record`` is the original JSON; a value that was not JSON is kept as ``record_text``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from schemas.topics import MAX_MESSAGE_BYTES
from streams.forward.config import DestinationConfig
from streams.forward.payload import Item
from streams.forward.retry import Backoff

__all__ = ["DeadLetters", "dead_letter_value"]

log = logging.getLogger(__name__)


def dead_letter_value(
    cfg: DestinationConfig,
    *,
    raw: bytes,
    reason: str,
    reply: Any,
    source: dict[str, Any],
    dedup_id: str = "",
    now_ns: int | None = None,
) -> bytes:
    """The JSON value of one dead letter."""
    value: dict[str, Any] = {
        "destination": cfg.name,
        "type": cfg.type,
        "reason": reason,
        "reply": reply,
        "dedup_id": dedup_id,
        "source": source,
        "time": time.time_ns() if now_ns is None else now_ns,
    }
    try:
        orjson.loads(raw)
        value["record"] = orjson.Fragment(raw)
    except orjson.JSONDecodeError:
        value["record_text"] = raw.decode("utf-8", "replace")
    return orjson.dumps(value, default=str)


class DeadLetters:
    """One idempotent producer shared by every destination of the process."""

    def __init__(
        self,
        bootstrap: str,
        *,
        backoff: Backoff | None = None,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.kafka_options = dict(kafka_options or {})
        self.backoff = backoff or Backoff()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    **self.kafka_options,
                    client_id="cadr-forward-dlq",
                    acks="all",
                    enable_idempotence=True,
                    max_request_size=MAX_MESSAGE_BYTES["dlq"],
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def write(
        self,
        cfg: DestinationConfig,
        *,
        raw: bytes,
        key: bytes | None,
        reason: str,
        reply: Any,
        source: dict[str, Any],
        dedup_id: str = "",
    ) -> None:
        """Store one dead letter; returns only once Kafka acknowledged it."""
        value = dead_letter_value(cfg, raw=raw, reason=reason, reply=reply, source=source, dedup_id=dedup_id)
        headers = [("cadr-destination", cfg.name.encode()), ("cadr-reason", reason[:200].encode())]
        attempt = 0
        while True:
            attempt += 1
            try:
                producer = await self._get()
                await producer.send_and_wait(cfg.dead_letter_topic, value=value, key=key, headers=headers)
                return
            except MessageSizeTooLargeError:
                # The topic takes less than this record (created elsewhere with a smaller
                # limit): keep where the record is, so the letter is still written.
                log.error(
                    "%s: dead letter too large for %s; storing its source position only",
                    cfg.name,
                    cfg.dead_letter_topic,
                )
                value = dead_letter_value(
                    cfg,
                    raw=b"",
                    reason=reason,
                    reply=reply,
                    source={**source, "record_omitted": True},
                    dedup_id=dedup_id,
                )
            except (KafkaError, OSError) as exc:
                log.error(
                    "%s: cannot write dead letter to %s (will retry): %s",
                    cfg.name,
                    cfg.dead_letter_topic,
                    exc,
                )
                await asyncio.sleep(self.backoff.delay(attempt))

    def for_destination(self, cfg: DestinationConfig, source_topic: str) -> Any:
        """The ``dead_letter(item, reason, reply)`` callback the delivery loop takes."""

        async def dead_letter(item: Item, reason: str, reply: Any) -> None:
            await self.write(
                cfg,
                raw=item.raw,
                key=item.key.encode(),
                reason=reason,
                reply=reply,
                source={"topic": source_topic, "partition": item.partition, "offset": item.offset},
                dedup_id=item.dedup_id,
            )

        return dead_letter
