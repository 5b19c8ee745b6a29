"""Another Kafka cluster or topic (for a SIEM that ingests from Kafka, or a partner's cluster).

Records are produced with the incident id as key (so the target topic keeps the order
per incident and can be compacted), ``acks=all`` and the idempotent producer, and the
batch counts as delivered only when every record is acknowledged. A record the target
refuses for what it is (too large, invalid) is dead-lettered; anything else is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from streams.forward.base import OK, Destination, ItemResult, Status
from streams.forward.config import DestinationConfig, DestinationOptions
from streams.forward.errors import TransientError
from streams.forward.http import ssl_context
from streams.forward.payload import Item
from streams.forward.table import Table, read_secret

__all__ = ["KafkaOptions", "KafkaTopic"]


# Errors about the record itself: sending it again cannot succeed.
@dataclass(frozen=True)
class KafkaOptions(DestinationOptions):
    bootstrap: str
    topic: str
    #: PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: str = ""
    compression: str = "lz4"

    @classmethod
    def parse(cls, t: Table) -> Self:
        return cls(
            bootstrap=t.required("bootstrap"),
            topic=t.required("topic"),
            security_protocol=t.text(
                "security_protocol", "PLAINTEXT", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
            ),
            sasl_mechanism=t.text(
                "sasl_mechanism", "PLAIN", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
            ),
            sasl_username=t.text("sasl_username"),
            sasl_password=t.text("sasl_password"),
            sasl_password_file=t.text("sasl_password_file"),
            compression=t.text("compression", "lz4", choices=("none", "gzip", "snappy", "lz4", "zstd")),
        )


_RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
)


class KafkaTopic(Destination):
    type_name = "kafka"
    options_type = KafkaOptions

    independent_items = True

    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        super().__init__(cfg, node=node)
        assert isinstance(cfg.options, KafkaOptions)
        self.opts: KafkaOptions = cfg.options
        self._password = read_secret(
            self.opts.sasl_password, self.opts.sasl_password_file, f"forward destination {cfg.name}"
        )
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()  # lanes call send() concurrently; start one producer
        self._extra_headers = [(k, v.encode()) for k, v in cfg.headers.items()]

    def describe(self) -> str:
        return f"kafka://{self.opts.bootstrap}/{self.opts.topic}"

    def _producer_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "bootstrap_servers": self.opts.bootstrap,
            "client_id": f"cadr-forward-{self.name}",
            "acks": "all",
            "enable_idempotence": True,
            "compression_type": None if self.opts.compression == "none" else self.opts.compression,
            "linger_ms": 5,
            "max_batch_size": 1 << 20,
            "request_timeout_ms": int(self.cfg.timeout_s * 1000),
            "security_protocol": self.opts.security_protocol,
        }
        if self.opts.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = ssl_context(self.cfg.tls)
        if self.opts.security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.opts.sasl_mechanism,
                sasl_plain_username=self.opts.sasl_username,
                sasl_plain_password=self._password,
            )
        return options

    async def start(self) -> None:
        async with self._starting:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(**self._producer_options())
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                raise TransientError(f"{self.describe()}: cannot connect: {exc}") from exc
            self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def encode(self, item: Item) -> bytes:
        return orjson.dumps(item.payload)

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        await self.start()
        assert self._producer is not None
        futures: list[asyncio.Future[Any] | BaseException] = []
        for item in items:
            headers = [("cadr-id", item.key.encode()), ("cadr-revision", str(item.revision).encode())]
            try:
                fut = await self._producer.send(
                    self.opts.topic,
                    value=self.wire(item),
                    key=item.key.encode(),
                    headers=headers + self._extra_headers,
                )
                futures.append(fut)
            except (KafkaError, OSError) as exc:
                futures.append(exc)
        outcomes = await asyncio.gather(
            *(f if isinstance(f, asyncio.Future) else _failed(f) for f in futures), return_exceptions=True
        )
        results: list[ItemResult] = []
        for outcome in outcomes:
            if not isinstance(outcome, BaseException):
                results.append(OK)
            elif isinstance(outcome, _RECORD_ERRORS):
                results.append(ItemResult(Status.REJECT, {"error": f"{type(outcome).__name__}: {outcome}"}))
            else:
                results.append(ItemResult(Status.RETRY, {"error": f"{type(outcome).__name__}: {outcome}"}))
        if all(r is OK for r in results):
            return None
        if all(r.status is Status.RETRY for r in results):
            raise TransientError(f"{self.describe()}: {results[0].reply['error']}", reply=results[0].reply)
        return results


async def _failed(exc: BaseException) -> Any:
    raise exc
