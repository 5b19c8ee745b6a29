"""Deliver items to one destination: batching, lanes, retries, splitting, dead letters.

This is the whole delivery policy, independent of Kafka and of the wire protocol:

- Items are split into ``concurrency`` lanes by a stable hash of their key (the
  incident id), so every update of one incident travels in one lane, in order; lanes
  run in parallel, each sending its requests one after the other.
- A request that fails transiently is sent again, after an exponential backoff with
  jitter, until it is acknowledged (``max_attempts = 0``, the default, never gives up).
- Where the receiver processes the items of a request independently (bulk APIs), a
  request carries at most one revision per incident, so a revision waiting for its
  retry never lets a later one overtake it. When a reply says some items failed, those
  are sent again (with any later item of the same incident in that request).
- A request refused as a whole for its content is halved until the record at fault
  stands alone; a record the destination refuses is dead-lettered with the reply.

:meth:`Deliverer.deliver` returns only when every item is acknowledged or
dead-lettered: the caller may then commit the offsets.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from streams.forward.base import Destination, ItemResult, Status
from streams.forward.errors import BatchRejectedError, TransientError
from streams.forward.metrics import DestinationMetrics
from streams.forward.payload import Item
from streams.forward.retry import Backoff

__all__ = ["DeadLetter", "Deliverer", "chunks", "lane_of", "lanes", "retry_set"]

log = logging.getLogger(__name__)

#: called with (item, reason, reply) and must not return before the dead letter is stored
DeadLetter = Callable[[Item, str, Any], Awaitable[None]]


def lane_of(key: str, n: int) -> int:
    """The lane (0..n-1) of a key: stable across processes, so also across restarts."""
    return zlib.crc32(key.encode()) % n if n > 1 else 0


def lanes(items: Sequence[Item], n: int) -> list[list[Item]]:
    """Split items into ``n`` ordered lanes; one key always lands in the same lane."""
    if n <= 1:
        return [list(items)] if items else []
    out: list[list[Item]] = [[] for _ in range(n)]
    for item in items:
        out[lane_of(item.key, n)].append(item)
    return [lane for lane in out if lane]


def chunks(
    items: Sequence[Item],
    max_items: int,
    max_bytes: int,
    size: Callable[[Item], int],
    *,
    distinct_keys: bool = False,
) -> Iterator[list[Item]]:
    """Consecutive requests of at most ``max_items`` items and ``max_bytes`` bytes.

    An item larger than ``max_bytes`` goes alone (the destination decides whether it fits).
    With ``distinct_keys`` a request holds at most one revision per incident: where a
    receiver processes the items of a request independently (bulk APIs), a later
    revision could otherwise be stored while an earlier one waits for its retry.
    """
    batch: list[Item] = []
    keys: set[str] = set()
    total = 0
    for item in items:
        n = size(item)
        if batch and (
            len(batch) >= max_items or total + n > max_bytes or (distinct_keys and item.key in keys)
        ):
            yield batch
            batch, total = [], 0
            keys.clear()
        batch.append(item)
        keys.add(item.key)
        total += n
    if batch:
        yield batch


def retry_set(items: Sequence[Item], results: Sequence[ItemResult]) -> list[Item]:
    """Items to send again after a partial failure, in their original order.

    Every item marked RETRY or RESEND, plus every later item of the same key even if it
    succeeded: resending a later revision after the earlier one keeps the arrival
    order per incident (bulk receivers answer a resent item as a duplicate).
    """
    again: list[Item] = []
    dirty: set[str] = set()
    for item, res in zip(items, results, strict=True):
        if res.status in (Status.RETRY, Status.RESEND):
            dirty.add(item.key)
            again.append(item)
        elif item.key in dirty and res.status is not Status.REJECT:
            again.append(item)
    return again


class Deliverer:
    """Delivers batches to one destination under the configured retry policy."""

    def __init__(
        self,
        dest: Destination,
        metrics: DestinationMetrics,
        dead_letter: DeadLetter,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.dest = dest
        self.cfg = dest.cfg
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.backoff = backoff or Backoff(dest.cfg.retry)
        self.sleep = sleep

    async def deliver(self, items: Sequence[Item]) -> None:
        """Deliver every item (acknowledged or dead-lettered); lanes run concurrently."""
        groups = lanes(items, self.cfg.concurrency)
        if len(groups) == 1:
            await self._lane(groups[0])
            return
        async with asyncio.TaskGroup() as tg:
            for group in groups:
                tg.create_task(self._lane(group))

    async def _lane(self, items: list[Item]) -> None:
        size = self._size
        distinct = self.dest.independent_items
        for batch in chunks(items, self.cfg.batch_size, self.cfg.batch_bytes, size, distinct_keys=distinct):
            await self._request(batch)

    def _size(self, item: Item) -> int:
        try:
            return len(self.dest.wire(item))
        except Exception:  # an item that cannot be encoded is rejected by send(); count it small
            return 0

    async def _request(self, batch: list[Item]) -> None:
        pending = batch
        attempt = 0
        while pending:
            attempt += 1
            self.metrics.requests += 1
            try:
                results = await self.dest.send(pending)
            except BatchRejectedError as exc:
                if len(pending) == 1:
                    await self._reject(pending[0], str(exc), exc.reply)
                    return
                # Halve to isolate the record at fault; the halves go in order, so
                # per-incident order holds.
                mid = len(pending) // 2
                await self._request(pending[:mid])
                await self._request(pending[mid:])
                return
            except TransientError as exc:
                self._failed(pending, str(exc))
                if await self._gave_up(pending, attempt, str(exc), exc.reply):
                    return
                await self.sleep(self.backoff.delay(attempt, at_least=exc.retry_after))
                self.metrics.retried += len(pending)
                continue
            if results is None:
                self._acked(pending, len(pending), 0)
                return
            if len(results) != len(pending):
                raise RuntimeError(f"{self.dest.name}: {len(results)} results for {len(pending)} items")
            ok = sum(1 for r in results if r.status in (Status.OK, Status.DUPLICATE))
            dup = sum(1 for r in results if r.status is Status.DUPLICATE)
            self._acked(pending, ok, dup)
            for item, res in zip(pending, results, strict=True):
                if res.status is Status.REJECT:
                    await self._reject(item, "rejected by destination", res.reply)
            again = retry_set(pending, results)
            if not again:
                return
            failures = [(i, r) for i, r in zip(pending, results, strict=True) if r.status is Status.RETRY]
            if failures:
                reason = f"{len(failures)} item(s) failed: {_short(failures[0][1].reply)}"
                failed = [i for i, _ in failures]
                self._failed(failed, reason)
                if await self._gave_up(failed, attempt, reason, failures[0][1].reply):
                    gone = {id(i) for i in failed}
                    again = [i for i in again if id(i) not in gone]
                else:
                    await self.sleep(self.backoff.delay(attempt))
            self.metrics.retried += len(again)
            pending = again

    def _acked(self, items: list[Item], ok: int, dup: int) -> None:
        self.metrics.sent += ok
        self.metrics.duplicates += dup
        self.metrics.success()

    def _failed(self, items: Sequence[Item], reason: str) -> None:
        self.metrics.failed += len(items)
        self.metrics.error(reason)
        log.warning("%s: %d record(s) not delivered, will retry: %s", self.dest.name, len(items), reason)

    async def _gave_up(self, items: list[Item], attempt: int, reason: str, reply: Any) -> bool:
        limit = self.cfg.retry.max_attempts
        if not limit or attempt < limit:
            return False
        for item in items:
            await self._reject(item, f"gave up after {attempt} attempts: {reason}", reply)
        return True

    async def _reject(self, item: Item, reason: str, reply: Any) -> None:
        log.error("%s: dead-lettering %s: %s %s", self.dest.name, item.dedup_id, reason, _short(reply))
        await self.dead_letter(item, reason, reply)
        self.metrics.dead_lettered += 1


def _short(reply: Any, limit: int = 300) -> str:
    text = reply if isinstance(reply, str) else repr(reply)
    return text if len(text) <= limit else text[:limit] + "..."
