"""Follow a Kubernetes audit log file (JSON lines, ``--audit-log-path``) into Kafka.

Guarantees:

- **No gaps.** The position (file identity + byte offset of the last complete line stored) is persisted
  only after Kafka acknowledged the lines before it. If publishing fails the same lines are retried.
- **No duplicates across restarts.** On start the tailer resumes at the persisted offset. A file is
  identified by (device, inode) *and* a fingerprint of its first bytes, because inodes are reused. A crash
  between Kafka's ack and the position write can repeat that last batch; its event ids repeat too, so
  downstream stages drop them (the same idempotence the webhook relies on).
- **Rotation.** kube-apiserver (lumberjack) renames ``audit.log`` to ``audit-<time>.log`` and opens a new
  ``audit.log``; logrotate may do the same or copy-and-truncate. On a rename the tailer drains the old file
  through its still-open descriptor before switching; on truncation it starts the file again from 0. If
  the process was down across a rotation, it finds the old file by inode + fingerprint in the same
  directory and finishes it first. A rotated file that was compressed or deleted meanwhile is a gap; it is
  logged and counted (``stats.lost_files``), never hidden.

A partial last line (the API server is mid-write) is left for the next read. A line longer than
``max_line_bytes`` goes to the DLQ (truncated) and the tailer skips to the next newline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.codec import dead_letter, encode
from sensors.audit.envelope import unwrap
from sensors.audit.errors import AuditError, AuditFormatError, PublishError
from sensors.audit.normalize import PodLookup, normalize
from sensors.audit.sink import Record, Sink

__all__ = ["AuditLogTailer", "Position", "TailerStats"]

log = logging.getLogger(__name__)

STAGE = "audit.tailer"
_FP_BYTES = 256
_CHUNK = 1 << 20
_COMPRESSED = (".gz", ".zst", ".xz", ".bz2", ".lz4", ".zip")


@dataclass
class Position:
    """Where the tailer is: which file (by identity) and the offset after the last stored line."""

    path: str
    dev: int
    inode: int
    offset: int
    fingerprint: str
    fp_len: int


@dataclass
class TailerStats:
    lines: int = 0
    events: int = 0
    rejected: int = 0
    rotations: int = 0
    truncations: int = 0
    lost_files: int = 0
    publish_failures: int = 0


def _fingerprint(fd: int, length: int) -> str:
    data = os.pread(fd, length, 0)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _OpenFile:
    """One open log file and the offset of the next unread byte."""

    def __init__(self, path: Path, fd: int, offset: int) -> None:
        self.path = path
        self.fd = fd
        st = os.fstat(fd)
        self.dev, self.inode = st.st_dev, st.st_ino
        self.offset = offset
        self.discarding = False  # inside an over-long line: skip to the next newline
        self.head: str | None = None  # fingerprint of the first _FP_BYTES, once the file has them

    def head_changed(self) -> bool:
        """Whether the file's first bytes changed since first seen (truncated and rewritten)."""
        if os.fstat(self.fd).st_size < _FP_BYTES:
            return self.head is not None
        current = _fingerprint(self.fd, _FP_BYTES)
        if self.head is None:
            self.head = current
            return False
        return current != self.head

    def position(self) -> Position:
        fp_len = min(os.fstat(self.fd).st_size, _FP_BYTES)
        return Position(
            str(self.path), self.dev, self.inode, self.offset, _fingerprint(self.fd, fp_len), fp_len
        )

    def matches(self, pos: Position) -> bool:
        if (self.dev, self.inode) != (pos.dev, pos.inode):
            return False
        if os.fstat(self.fd).st_size < pos.fp_len:
            return False
        return _fingerprint(self.fd, pos.fp_len) == pos.fingerprint

    def close(self) -> None:
        os.close(self.fd)


class AuditLogTailer:
    """Tail one audit log path. Drive it with :meth:`run` or, in tests, :meth:`poll_once`."""

    def __init__(
        self,
        path: str | Path,
        sink: Sink,
        state_path: str | Path,
        *,
        cluster: str = "",
        node: str = "",
        pods: PodLookup | None = None,
        batch_lines: int = 500,
        max_line_bytes: int = 4 << 20,
        poll_interval_s: float = 0.25,
        start_at_end: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sink = sink
        self.state_path = Path(state_path)
        self.cluster = cluster
        self.node = node
        self.pods = pods
        self.batch_lines = batch_lines
        self.max_line_bytes = max_line_bytes
        self.poll_interval_s = poll_interval_s
        self.start_at_end = start_at_end
        self.stats = TailerStats()
        self._current: _OpenFile | None = None
        self._backlog: list[_OpenFile] = []  # rotated files still to finish, oldest first
        self._started = False

    # -- position persistence -------------------------------------------------------------------

    def _load_position(self) -> Position | None:
        try:
            data = orjson.loads(self.state_path.read_bytes())
            return Position(**data)
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise AuditError(
                f"{self.state_path}: unreadable tailer position ({exc}); remove it to start over"
            ) from exc

    def _save_position(self, f: _OpenFile) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(asdict(f.position())))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    # -- opening and rotation --------------------------------------------------------------------

    def _open(self, path: Path, offset: int = 0) -> _OpenFile | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        return _OpenFile(path, fd, offset)

    def _find_rotated(self, pos: Position) -> _OpenFile | None:
        """The file the saved position points at, wherever rotation moved it in the same directory."""
        directory = self.path.parent
        for entry in sorted(directory.iterdir()):
            try:
                st = entry.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (pos.dev, pos.inode) or not entry.is_file():
                continue
            f = self._open(entry, pos.offset)
            if f is not None and f.matches(pos):
                return f
            if f is not None:
                f.close()
        return None

    def _rotated_after(self, old: _OpenFile, current: _OpenFile) -> list[_OpenFile]:
        """Files rotated after ``old`` while the tailer was down (a second rotation), oldest first.

        They are the log's siblings (``audit-<time>.log``, ``audit.log.1``) modified after ``old``;
        compressed ones cannot be read and are a gap.
        """
        old_mtime = os.fstat(old.fd).st_mtime_ns
        skip = {(old.dev, old.inode), (current.dev, current.inode)}
        found: list[tuple[int, Path]] = []
        for entry in self.path.parent.iterdir():
            if not entry.name.startswith(self.path.stem) or entry.name.endswith(_COMPRESSED):
                continue
            if entry.name.startswith(self.state_path.name) and entry.parent == self.state_path.parent:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if entry.is_file() and (st.st_dev, st.st_ino) not in skip and st.st_mtime_ns > old_mtime:
                found.append((st.st_mtime_ns, entry))
        opened = [self._open(p) for _, p in sorted(found)]
        return [f for f in opened if f is not None]

    def _start(self) -> bool:
        """Open the file(s) to read, resuming at the saved position. False while the log does not exist."""
        current = self._open(self.path)
        if current is None:
            return False
        pos = self._load_position()
        if pos is None:
            if self.start_at_end:
                current.offset = os.fstat(current.fd).st_size
        elif current.matches(pos):
            current.offset = pos.offset
        else:
            old = self._find_rotated(pos)
            if old is not None:
                log.info("resuming rotated audit log %s at offset %d", old.path, pos.offset)
                self._backlog.append(old)
                self._backlog.extend(self._rotated_after(old, current))
            else:
                self.stats.lost_files += 1
                log.warning(
                    "audit log %s at the saved position (inode %d) is gone (deleted or compressed): "
                    "lines after offset %d were not read",
                    pos.path,
                    pos.inode,
                    pos.offset,
                )
        self._current = current
        self._started = True
        return True

    def _check_rotation(self) -> bool:
        """Called at EOF of the current file: has the path moved on to a new file, or been truncated?"""
        cur = self._current
        assert cur is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, new one not created yet: keep draining the old descriptor
        if (st.st_dev, st.st_ino) != (cur.dev, cur.inode):
            new = self._open(self.path)
            if new is None:
                return False
            self.stats.rotations += 1
            log.info("audit log %s rotated; finishing the old file first", self.path)
            self._backlog.append(cur)
            self._current = new
            return True
        elif st.st_size < cur.offset or cur.head_changed():
            self.stats.truncations += 1
            log.info("audit log %s was truncated; reading it again from the start", self.path)
            cur.offset = 0
            cur.head = None
            cur.discarding = False
            return True
        return False

    # -- reading ---------------------------------------------------------------------------------

    def _read_lines(self, f: _OpenFile, final: bool) -> tuple[list[bytes], int, bool, list[Record]]:
        """Complete lines from ``f.offset`` (up to batch_lines).

        Returns (lines, new_offset, discarding, dead); nothing on ``f`` changes until the caller has
        stored the lines, so a failed publish re-reads exactly the same bytes.
        """
        lines: list[bytes] = []
        dead: list[Record] = []
        offset = f.offset
        discarding = f.discarding
        while len(lines) < self.batch_lines:
            chunk = os.pread(f.fd, _CHUNK, offset)
            if not chunk:
                break
            start = 0
            while len(lines) < self.batch_lines:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break
                line = chunk[start:nl]
                if discarding:
                    discarding = False
                elif len(line) > self.max_line_bytes:
                    reason = (
                        f"line at offset {offset + start} of {f.path} is over {self.max_line_bytes} bytes"
                    )
                    dead.append((b"", encode(dead_letter(line, stage=STAGE, reason=reason))))
                elif line.strip():
                    lines.append(line)
                start = nl + 1
            if start:
                offset += start
                continue
            # No newline in this chunk: a line longer than a chunk, an over-long line, or a partial tail.
            window = os.pread(f.fd, self.max_line_bytes + 1, offset)
            nl = window.find(b"\n")
            if nl >= 0:
                if not discarding and window[:nl].strip():
                    lines.append(window[:nl])
                discarding = False
                offset += nl + 1
                continue
            if len(window) > self.max_line_bytes:
                if not discarding:
                    reason = f"line at offset {offset} of {f.path} is over {self.max_line_bytes} bytes"
                    dead.append((b"", encode(dead_letter(window, stage=STAGE, reason=reason))))
                    discarding = True
                offset += len(window)
                continue
            if final and window.strip() and not discarding:
                # a rotated file will never get its newline: its tail is the last line
                lines.append(window)
                offset += len(window)
            break
        return lines, offset, discarding, dead

    def _convert(self, lines: list[bytes], f: _OpenFile) -> tuple[list[Record], list[Record]]:
        events: list[Record] = []
        dead: list[Record] = []
        for line in lines:
            try:
                items = unwrap(orjson.loads(line))
            except (orjson.JSONDecodeError, AuditFormatError) as exc:
                dead.append((b"", encode(dead_letter(line, stage=STAGE, reason=f"{f.path}: {exc}"))))
                continue
            for item in items:
                try:
                    ev = normalize(item, cluster=self.cluster, node=self.node, pods=self.pods)
                except Exception as exc:  # AuditFormatError, or a bug: one line must not stop the file
                    if not isinstance(exc, AuditFormatError):
                        log.exception("normalizing an audit event failed")
                    dead.append((b"", encode(dead_letter(item, stage=STAGE, reason=f"{f.path}: {exc}"))))
                    continue
                assert ev.audit is not None
                events.append((ev.audit.audit_id.encode(), encode(ev)))
        return events, dead

    async def _process(self, f: _OpenFile, final: bool) -> int:
        """Publish every complete line available in ``f``; returns how many lines were stored."""
        total = 0
        while True:
            lines, new_offset, discarding, dead_long = await asyncio.to_thread(self._read_lines, f, final)
            if new_offset == f.offset:
                return total
            events, dead = self._convert(lines, f)
            dead.extend(dead_long)
            # Raises PublishError: the offset stays, the same lines are read again next time.
            await self.sink.publish(events, dead)
            f.offset, f.discarding = new_offset, discarding
            await asyncio.to_thread(self._save_position, f)
            self.stats.lines += len(lines)
            self.stats.events += len(events)
            self.stats.rejected += len(dead)
            total += len(lines)

    async def poll_once(self) -> int:
        """Read and store whatever is available now (following rotation); returns lines stored."""
        if not self._started and not self._start():
            return 0
        done = 0
        while self._backlog:
            old = self._backlog[0]
            done += await self._process(old, final=True)
            old.close()
            self._backlog.pop(0)
            # the saved position must now name the current file, not the finished one
            assert self._current is not None
            await asyncio.to_thread(self._save_position, self._current)
        assert self._current is not None
        done += await self._process(self._current, final=False)
        if self._check_rotation():
            done += await self.poll_once()
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Tail until ``stop`` is set; Kafka failures are retried with backoff."""
        await self.sink.start()
        backoff = self.poll_interval_s
        try:
            while not stop.is_set():
                try:
                    got = await self.poll_once()
                    backoff = self.poll_interval_s
                except PublishError as exc:
                    self.stats.publish_failures += 1
                    log.warning("audit log batch not stored, retrying: %s", exc)
                    got = 0
                    backoff = min(backoff * 2, 10.0)
                if not got:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
        finally:
            self.close()
            await self.sink.stop()

    def close(self) -> None:
        for f in [*self._backlog, *([self._current] if self._current else [])]:
            f.close()
        self._backlog.clear()
        self._current = None
        self._started = False

    def status(self) -> dict[str, Any]:
        return asdict(self.stats)
