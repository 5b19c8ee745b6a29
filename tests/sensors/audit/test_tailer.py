"""The audit log tailer: partial lines, restarts, rotation (running and while down), truncation, failures.

Every test drives :meth:`AuditLogTailer.poll_once` directly (no timing), and checks the one property that
matters: each line of the log reaches the sink exactly once, in order.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import orjson
import pytest

from schemas.codec import decode_event
from schemas.records import DeadLetter
from sensors.audit.errors import PublishError
from sensors.audit.sink import MemorySink
from sensors.audit.tailer import AuditLogTailer


def _line(i: int) -> bytes:
    return orjson.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "auditID": f"id-{i:05d}",
            "stage": "ResponseComplete",
            "verb": "get",
            "user": {"username": "alice"},
            "objectRef": {"resource": "pods", "namespace": "default", "name": f"web-{i}"},
            "responseStatus": {"code": 200},
            "stageTimestamp": "2020-04-21T17:32:29.942468Z",
        }
    )


def _append(path: Path, numbers: range, *, newline_last: bool = True) -> None:
    with open(path, "ab") as fh:
        for i in numbers:
            fh.write(_line(i))
            if newline_last or i != numbers[-1]:
                fh.write(b"\n")


def _ids(sink: MemorySink) -> list[int]:
    return [int(decode_event(v).audit.audit_id.split("-")[1]) for _, v in sink.events]  # type: ignore[union-attr]


def _tailer(tmp_path: Path, sink: MemorySink, **kw: object) -> AuditLogTailer:
    return AuditLogTailer(tmp_path / "audit.log", sink, tmp_path / "state" / "audit.pos", cluster="c", **kw)  # type: ignore[arg-type]


async def test_reads_complete_lines_and_waits_for_a_partial_one(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    t = _tailer(tmp_path, sink)
    assert await t.poll_once() == 0  # no log yet
    _append(log, range(3))
    _append(log, range(3, 4), newline_last=False)  # the API server is mid-write
    assert await t.poll_once() == 3
    assert _ids(sink) == [0, 1, 2]
    with open(log, "ab") as fh:
        fh.write(b"\n")
    assert await t.poll_once() == 1
    assert _ids(sink) == [0, 1, 2, 3]
    t.close()


async def test_resumes_after_a_restart_without_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(5))
    first = _tailer(tmp_path, sink)
    await first.poll_once()
    first.close()
    _append(log, range(5, 8))
    second = _tailer(tmp_path, sink)
    await second.poll_once()
    second.close()
    assert _ids(sink) == list(range(8))


async def test_follows_a_rename_rotation_while_running(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    t = _tailer(tmp_path, sink, batch_lines=2)
    _append(log, range(3))
    await t.poll_once()
    _append(log, range(3, 6))  # written before the rotation, not read yet
    os.rename(log, tmp_path / "audit-2020-04-21T17-32-30.000.log")  # lumberjack's naming
    _append(log, range(6, 9))
    await t.poll_once()
    assert _ids(sink) == list(range(9))
    assert t.stats.rotations == 1
    t.close()


async def test_finishes_a_file_rotated_while_the_tailer_was_down(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(4))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    _append(log, range(4, 6))
    os.rename(log, tmp_path / "audit.log.1")
    _append(log, range(6, 9))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    assert _ids(sink) == list(range(9))


async def test_two_rotations_while_down(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(2))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    _append(log, range(2, 3))
    os.rename(log, tmp_path / "audit-1.log")
    _append(log, range(3, 5))
    later = os.stat(tmp_path / "audit-1.log").st_mtime_ns + 1_000_000
    os.utime(log, ns=(later, later))
    os.rename(log, tmp_path / "audit-2.log")
    _append(log, range(5, 7))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    assert _ids(sink) == list(range(7))


async def test_copy_truncate_starts_the_file_again(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    t = _tailer(tmp_path, sink)
    _append(log, range(5))
    await t.poll_once()
    with open(log, "wb"):
        pass  # logrotate copytruncate
    _append(log, range(5, 7))
    await t.poll_once()
    assert _ids(sink) == list(range(7)) and t.stats.truncations == 1
    t.close()


async def test_a_failed_publish_keeps_the_position(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(3))
    t = _tailer(tmp_path, sink)
    sink.fail = RuntimeError("kafka down")
    with pytest.raises(PublishError):
        await t.poll_once()
    t.close()
    sink.fail = None
    t = _tailer(tmp_path, sink)  # a restart after the failure: still nothing lost
    await t.poll_once()
    assert _ids(sink) == [0, 1, 2]
    t.close()


async def test_bad_lines_go_to_the_dlq_and_the_rest_flows(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(2))
    with open(log, "ab") as fh:
        fh.write(b"this is not json\n")
        fh.write(b'{"kind": 0}\n')
        fh.write(b'{"kind":"Event","auditID":"x","verb":"get"}\n')  # no timestamp
        fh.write(b"\n")  # blank lines are skipped
    _append(log, range(2, 4))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    assert _ids(sink) == [0, 1, 2, 3]
    dead = [msgspec.json.decode(v, type=DeadLetter) for _, v in sink.dead]
    assert [d.stage for d in dead] == ["audit.tailer"] * 3
    assert dead[0].payload == "this is not json"
    assert "$.stageTimestamp" in dead[2].reason


async def test_an_over_long_line_is_skipped_to_the_dlq(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(1))
    with open(log, "ab") as fh:
        fh.write(b'{"kind":"Event","pad":"' + b"x" * 300_000 + b'"}\n')
    _append(log, range(1, 3))
    t = _tailer(tmp_path, sink, max_line_bytes=100_000)
    await t.poll_once()
    t.close()
    assert _ids(sink) == [0, 1, 2]
    (dead,) = [msgspec.json.decode(v, type=DeadLetter) for _, v in sink.dead]
    assert "over 100000 bytes" in dead.reason


async def test_lines_longer_than_a_read_chunk_are_fine(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    big = orjson.loads(_line(0))
    big["userAgent"] = "u" * 3_000_000  # > the 1 MiB read chunk, < the 4 MiB line limit
    log.write_bytes(orjson.dumps(big) + b"\n")
    _append(log, range(1, 2))
    t = _tailer(tmp_path, sink)
    await t.poll_once()
    t.close()
    assert _ids(sink) == [0, 1] and not sink.dead


async def test_start_at_end_skips_history(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = MemorySink()
    _append(log, range(3))
    t = _tailer(tmp_path, sink, start_at_end=True)
    await t.poll_once()
    _append(log, range(3, 5))
    await t.poll_once()
    t.close()
    assert _ids(sink) == [3, 4]
