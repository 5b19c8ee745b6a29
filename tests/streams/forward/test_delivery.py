"""The delivery policy: lanes, batching, backoff, partial retries, splitting, dead letters.

Pure: a scripted destination stands in for the wire so every branch of the policy runs
deterministically. The same policy against real servers is in test_forward_http.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from streams.forward.base import OK, Destination, ItemResult, Status
from streams.forward.config import RetryConfig
from streams.forward.delivery import Deliverer, chunks, lanes, retry_set
from streams.forward.errors import BatchRejectedError, TransientError
from streams.forward.metrics import DestinationMetrics
from streams.forward.parse import parse_destination
from streams.forward.payload import Item, make_item
from streams.forward.retry import Backoff
from tests.streams.forward.servers import make_incident

Script = Callable[[Sequence[Item], int], list[ItemResult] | None]


class Scripted(Destination):
    """Answers each request with ``script(items, request_number)``; records what it got."""

    def __init__(self, script: Script, **cfg: Any) -> None:
        table = {"name": "s", "type": "webhook", "url": "http://127.0.0.1:1", **cfg}
        super().__init__(parse_destination(table, "d"))
        self.script = script
        self.requests: list[list[str]] = []
        self.delivered: list[str] = []

    def encode(self, item: Item) -> bytes:
        return item.dedup_id.encode()

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        self.requests.append([i.dedup_id for i in items])
        result = self.script(items, len(self.requests))
        statuses = result or [OK] * len(items)
        self.delivered += [i.dedup_id for i, r in zip(items, statuses, strict=True) if r.status is Status.OK]
        return result


def _items(spec: list[tuple[int, int]]) -> list[Item]:
    cfg = parse_destination({"name": "x", "type": "webhook", "url": "http://x"}, "d")
    return [make_item(make_incident(n, rev), cfg) for n, rev in spec]


async def _run(
    dest: Scripted, items: list[Item]
) -> tuple[DestinationMetrics, list[tuple[str, str]], list[float]]:
    metrics = DestinationMetrics("s", "webhook")
    dead: list[tuple[str, str]] = []
    sleeps: list[float] = []

    async def dead_letter(item: Item, reason: str, reply: Any) -> None:
        dead.append((item.dedup_id, reason))

    async def sleep(s: float) -> None:
        sleeps.append(s)

    d = Deliverer(dest, metrics, dead_letter, backoff=Backoff(dest.cfg.retry, random.Random(1)), sleep=sleep)
    await d.deliver(items)
    return metrics, dead, sleeps


def test_lanes_keep_each_incident_in_one_ordered_lane() -> None:
    items = _items([(n, r) for r in (1, 2, 3) for n in range(20)])
    groups = lanes(items, 4)
    assert sum(len(g) for g in groups) == len(items)
    for g in groups:
        keys = {i.key for i in g}
        for other in groups:
            if other is not g:
                assert not keys & {i.key for i in other}
        for key in keys:
            assert [i.revision for i in g if i.key == key] == [1, 2, 3]
    assert lanes(items, 1) == [items]


def test_chunks_respect_count_and_bytes() -> None:
    items = _items([(n, 1) for n in range(10)])
    assert [len(c) for c in chunks(items, 4, 10**6, lambda i: 10)] == [4, 4, 2]
    assert [len(c) for c in chunks(items, 100, 25, lambda i: 10)] == [2, 2, 2, 2, 2]
    assert [len(c) for c in chunks(items[:2], 100, 5, lambda i: 10)] == [1, 1]  # oversized items go alone


def test_retry_set_resends_later_revisions_of_a_failed_incident() -> None:
    items = _items([(1, 1), (2, 1), (1, 2), (3, 1), (2, 2)])
    results = [ItemResult(Status.RETRY), OK, OK, ItemResult(Status.REJECT), OK]
    assert [i.dedup_id for i in retry_set(items, results)] == ["inc-000001:1", "inc-000001:2"]


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    b = Backoff(
        RetryConfig(initial_backoff_s=0.5, max_backoff_s=8, multiplier=2, jitter=0.5), random.Random(7)
    )
    assert [b.ceiling(a) for a in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]
    for attempt in range(1, 10):
        d = b.delay(attempt)
        assert b.ceiling(attempt) * 0.5 <= d <= b.ceiling(attempt)
    assert b.delay(1, at_least=3.0) == 3.0  # a server's Retry-After wins
    assert b.ceiling(10_000) == 8  # no overflow on very long outages


async def test_transient_failures_retry_until_acknowledged() -> None:
    dest = Scripted(lambda items, n: _raise(TransientError("down")) if n <= 3 else None)
    items = _items([(1, 1), (1, 2)])
    metrics, dead, sleeps = await _run(dest, items)
    assert dest.delivered == ["inc-000001:1", "inc-000001:2"]
    assert len(dest.requests) == 4 and not dead
    assert (metrics.sent, metrics.failed, metrics.retried) == (2, 6, 6)
    assert len(sleeps) == 3 and sleeps[0] <= sleeps[2] * 2
    assert metrics.up


async def test_max_attempts_dead_letters_instead_of_dropping() -> None:
    dest = Scripted(lambda items, n: _raise(TransientError("down")), retry={"max_attempts": 2})
    _, dead, _ = await _run(dest, _items([(1, 1)]))
    assert dead == [("inc-000001:1", "gave up after 2 attempts: down")]


async def test_max_attempts_on_a_partial_failure_dead_letters_only_the_failing_item() -> None:
    def script(items: Sequence[Item], n: int) -> list[ItemResult]:
        return [ItemResult(Status.RETRY, "429") if i.dedup_id == "inc-000001:1" else OK for i in items]

    dest = Scripted(script, retry={"max_attempts": 2}, concurrency=1)
    _, dead, _ = await _run(dest, _items([(1, 1), (1, 2), (2, 1)]))
    assert [d for d, _ in dead] == ["inc-000001:1"]
    assert dest.requests[-1] == ["inc-000001:2"]  # the later revision still goes after it


async def test_partial_failure_resends_only_what_must_go_again() -> None:
    def script(items: Sequence[Item], n: int) -> list[ItemResult] | None:
        if n == 1:  # 1:1 throttled, 2:1 refused, the rest fine
            return [ItemResult(Status.RETRY, "429"), ItemResult(Status.REJECT, "bad"), OK, OK]
        return None

    dest = Scripted(script)
    metrics, dead, sleeps = await _run(dest, _items([(1, 1), (2, 1), (1, 2), (3, 1)]))
    assert dest.requests == [
        ["inc-000001:1", "inc-000002:1", "inc-000001:2", "inc-000003:1"],
        ["inc-000001:1", "inc-000001:2"],  # 1:2 again so it arrives after 1:1
    ]
    assert dead == [("inc-000002:1", "rejected by destination")]
    assert metrics.dead_lettered == 1 and len(sleeps) == 1


async def test_resend_without_failure_does_not_back_off() -> None:
    def script(items: Sequence[Item], n: int) -> list[ItemResult] | None:
        if n == 1:
            return [OK, ItemResult(Status.REJECT, "bad"), ItemResult(Status.RESEND)]
        return None

    dest = Scripted(script)
    _, dead, sleeps = await _run(dest, _items([(1, 1), (2, 1), (3, 1)]))
    assert dest.requests[1] == ["inc-000003:1"] and sleeps == [] and len(dead) == 1


async def test_a_refused_batch_is_halved_until_the_culprit_stands_alone() -> None:
    def script(items: Sequence[Item], n: int) -> None:
        if any(i.key == "inc-000003" for i in items):
            raise BatchRejectedError("HTTP 400", reply={"status": 400})

    dest = Scripted(script, concurrency=1)
    metrics, dead, _ = await _run(dest, _items([(n, 1) for n in range(1, 7)]))
    assert dead == [("inc-000003:1", "HTTP 400")]
    assert sorted(dest.delivered) == [f"inc-00000{n}:1" for n in (1, 2, 4, 5, 6)]
    # the halves go one after the other, so the request's order holds
    assert dest.delivered == sorted(dest.delivered)
    assert metrics.sent == 5


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_batches_and_lanes_deliver_everything_in_order(concurrency: int) -> None:
    dest = Scripted(lambda items, n: None, batch_size=7, concurrency=concurrency)
    items = _items([(n, r) for r in range(1, 6) for n in range(10)])
    metrics, _, _ = await _run(dest, items)
    assert sorted(dest.delivered) == sorted(i.dedup_id for i in items)
    assert all(len(r) <= 7 for r in dest.requests)
    for n in range(10):
        revs = [int(d.split(":")[1]) for d in dest.delivered if d.startswith(f"inc-{n:06d}:")]
        assert revs == [1, 2, 3, 4, 5]
    assert metrics.sent == 50


def _raise(exc: Exception) -> None:
    raise exc
