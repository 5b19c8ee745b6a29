"""The sensors' one JSON-lines sink: events as one JSON object a line, to a file or stdout.

``cadr sensor ebpf --output FILE`` and ``cadr sensor audit --output FILE`` (``-`` = stdout) write
here instead of Kafka: for looking at what a sensor sees, not for production (no spool, no
retries). It speaks both sensors' sink protocols: :class:`sensors.ebpf.sensor.Sink`
(``send``/``send_batch``) and :class:`sensors.audit.sink.Sink` (``publish``, where a dead
letter is written as ``{"dead_letter": <record>}``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from schemas.records import Event
from sensors.publisher import encode_event

if TYPE_CHECKING:
    from sensors.ebpf.batch import JsonBatch

__all__ = ["JsonLinesSink"]


class JsonLinesSink:
    """One JSON event per line, appended to ``target`` (opened now), or stdout for ``-``."""

    #: the eBPF sensor hands over each poll's events already encoded
    wants_json = True

    def __init__(self, target: str) -> None:
        self.target = target
        self.written = 0
        self._fh: IO[bytes] | None = None
        self._open()

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self._fh = sys.stdout.buffer if self.target == "-" else open(self.target, "ab")  # noqa: SIM115
        return self._fh

    def _write(self, data: bytes | memoryview, events: int) -> None:
        fh = self._open()
        fh.write(data)
        fh.flush()
        self.written += events

    def _close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.flush()
            if fh is not sys.stdout.buffer:
                fh.close()

    # -- the eBPF sensor's sink (sensors.ebpf.sensor.Sink) --

    async def send(self, batch: list[tuple[Event, bytes]]) -> None:
        if batch:
            self._write(b"\n".join([encode_event(ev) for ev, _ in batch]) + b"\n", len(batch))

    async def send_batch(self, batch: JsonBatch) -> None:
        self._write(batch.data, len(batch))

    def counters(self) -> dict[str, int]:
        return {"written": self.written}

    async def aclose(self) -> None:
        self._close()

    # -- the audit intake's sink (sensors.audit.sink.Sink); records are (key, value) --

    async def start(self) -> None:
        self._open()

    async def stop(self) -> None:
        self._close()

    async def publish(
        self, events: Sequence[tuple[bytes, bytes]], dead: Sequence[tuple[bytes, bytes]]
    ) -> None:
        lines = [value for _, value in events] + [b'{"dead_letter":' + value + b"}" for _, value in dead]
        if lines:
            self._write(b"\n".join(lines) + b"\n", len(events))
