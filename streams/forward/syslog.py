"""Syslog: RFC 5424 messages, octet-counted over TCP (RFC 6587) or TLS (RFC 5425).

One message per record::

    <PRI>1 TIMESTAMP HOSTNAME cadr - incident [cadr@32473 incident_id="..." revision="3" ...] MSG

MSG is the JSON payload (cadr or OCSF) or a CEF line. The structured data repeats the
id and revision so a receiver can drop duplicates without parsing MSG.

Syslog over TCP has no application acknowledgment. The strongest signal available is
the peer's TCP stack acknowledging every byte: after writing a batch the sender waits
until the socket's send queue (``SIOCOUTQ``: bytes not yet acknowledged by the peer)
is empty, and only then reports the batch delivered. A connection that breaks before
that is reopened and the whole batch sent again (at-least-once). What this cannot
cover is a receiver that dies after its kernel acknowledged the bytes but before it
wrote them; RELP exists for that, and is not implemented here.

Sockets are blocking and driven from a small thread pool (one thread per lane), which
makes "all bytes handed to the kernel" exact for TLS too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self

import orjson

from schemas.records import Incident, Severity
from schemas.text import escape_controls, escape_json_controls
from streams.forward.base import OK, Destination, ItemResult, Status
from streams.forward.cef import cef_line
from streams.forward.config import DestinationConfig, DestinationOptions, TlsConfig
from streams.forward.delivery import lane_of
from streams.forward.errors import ForwardConfigError, ForwardError, TransientError
from streams.forward.http import ssl_context
from streams.forward.payload import Item, record_time_ns, rfc3339
from streams.forward.table import Table

__all__ = [
    "SYSLOG_SEVERITY",
    "MessageTooLargeError",
    "Syslog",
    "SyslogOptions",
    "compact_payload",
    "facility_code",
    "frame",
    "rfc5424",
    "sd_escape",
]

#: cadr severity -> syslog severity (RFC 5424 table 2)
SYSLOG_SEVERITY = {
    Severity.CRITICAL: 2,
    Severity.HIGH: 3,
    Severity.MEDIUM: 4,
    Severity.LOW: 5,
    Severity.INFO: 6,
}
_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}


def facility_code(name: str) -> int:
    """Numeric syslog facility for a name from :class:`SyslogOptions`."""
    return _FACILITIES[name]


@dataclass(frozen=True)
class SyslogOptions(DestinationOptions):
    host: str
    port: int
    #: tcp (RFC 6587 octet counting) or tls (RFC 5425)
    transport: str = "tcp"
    #: json (cadr or OCSF record as the MSG) or cef (ArcSight CEF line as the MSG)
    payload: str = "json"
    facility: str = "local0"
    app_name: str = "cadr"
    #: HOSTNAME field; empty = the node name from settings
    hostname: str = ""
    #: SD-ID of the structured data element carrying incident_id and revision
    sd_id: str = "cadr@32473"
    utf8_bom: bool = False
    #: a larger message drops its timeline/edges (marked truncated); if still larger it is dead-lettered
    max_message_bytes: int = 65536

    @classmethod
    def parse(cls, t: Table) -> Self:
        if "port" not in t.data:
            raise ForwardConfigError(f"{t.where}: missing required key 'port'")
        so = cls(
            host=t.required("host"),
            port=t.integer("port", 0, lo=1, hi=65535),
            transport=t.text("transport", "tcp", choices=("tcp", "tls")),
            payload=t.text("payload", "json", choices=("json", "cef")),
            facility=t.text("facility", "local0", choices=tuple(_FACILITIES)),
            app_name=t.text("app_name", "cadr"),
            hostname=t.text("hostname"),
            sd_id=t.text("sd_id", "cadr@32473"),
            utf8_bom=t.flag("utf8_bom", False),
            max_message_bytes=t.integer("max_message_bytes", 65536, lo=480),
        )
        for key, value in (("app_name", so.app_name), ("hostname", so.hostname), ("sd_id", so.sd_id)):
            if any(c.isspace() or not c.isprintable() for c in value) or any(c in value for c in '="]'):
                raise ForwardConfigError(f'{t.where}.{key}: must be printable ASCII without spaces, = " ]')
        if not so.sd_id:
            raise ForwardConfigError(f"{t.where}.sd_id: must not be empty")
        return so

    def settle(self, cfg: DestinationConfig, given: Mapping[str, Any], where: str) -> DestinationConfig:
        if self.transport == "tls" and cfg.tls is None:
            return dataclasses.replace(cfg, tls=TlsConfig())
        return cfg


_BOM = b"\xef\xbb\xbf"
_TLS_SETTLE_S = 0.25
_SIOCOUTQ = termios.TIOCOUTQ  # same ioctl number; on a TCP socket: bytes not yet acked by the peer


class MessageTooLargeError(ForwardError):
    """A record does not fit ``max_message_bytes`` even in its compact form."""


def sd_escape(value: Any) -> str:
    """An SD-PARAM value with ``"``, ``\\`` and ``]`` escaped (RFC 5424 section 6.3.3), control characters
    written visibly (:func:`schemas.text.escape_controls`)."""
    text = escape_controls(value if isinstance(value, str) else str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str, max_len: int) -> str:
    """PRINTUSASCII only (33..126), at most ``max_len``; ``-`` when empty (the NILVALUE)."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:max_len]
    return clean or "-"


def rfc5424(
    *,
    pri: int,
    timestamp: str,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    structured_data: str,
    msg: bytes,
    bom: bool = False,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG."""
    header = " ".join(
        [
            f"<{pri}>1",
            timestamp or "-",
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(procid, 128),
            _header_field(msgid, 32),
            structured_data or "-",
        ]
    )
    return header.encode("ascii") + b" " + (_BOM if bom else b"") + msg


def frame(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def compact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without its bulky parts (timeline, edges, evidences), marked ``truncated``.

    The full record stays in Kafka and the store; the SIEM still gets the story's
    title, summary, severity, workloads and techniques.
    """
    out = {k: v for k, v in payload.items() if k not in ("timeline", "edges", "evidences")}
    info = out.get("finding_info")
    if isinstance(info, dict) and "related_events" in info:
        out["finding_info"] = {k: v for k, v in info.items() if k != "related_events"}
    out["truncated"] = True
    return out


def _outq(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    """Is ``sock`` readable (data, EOF, reset) within ``timeout_s``?

    poll(2), not select(2): select cannot watch a descriptor numbered 1024 or above and fails with
    "filedescriptor out of range". A busy forwarder reaches such numbers (an embedded ClickHouse alone keeps
    three open files per thread), and reading that failure as "peer closed" made every send to a live
    receiver fail.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)  # POLLHUP and POLLERR are always reported
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def _peer_closed(sock: socket.socket) -> bool:
    """Has the receiver closed (or reset) the connection? Syslog receivers never send data."""
    try:
        readable = _readable(sock, 0)
    except (OSError, ValueError):
        return True  # a closed socket (fileno -1)
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return False  # TLS housekeeping (session tickets), not application data
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send_all(self, data: bytes, timeout: float) -> None:
        """Write ``data`` and wait until the peer's TCP stack acknowledged every byte."""
        if _peer_closed(self.sock):
            raise ConnectionResetError("the receiver closed the connection")
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        self.sock.sendall(data)
        pause = 0.0005
        while _outq(self.sock) > 0:
            if _peer_closed(self.sock):
                raise ConnectionResetError("the receiver closed the connection before acknowledging")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{_outq(self.sock)} bytes not acknowledged within {timeout}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if _peer_closed(self.sock):
            raise ConnectionResetError("the receiver closed the connection while receiving")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Syslog(Destination):
    type_name = "syslog"
    options_type = SyslogOptions

    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        super().__init__(cfg, node=node)
        assert isinstance(cfg.options, SyslogOptions)
        self.opts: SyslogOptions = cfg.options
        self._facility = facility_code(self.opts.facility)
        self._hostname = self.opts.hostname or node or socket.gethostname()
        self._ctx: ssl.SSLContext | None = ssl_context(cfg.tls) if self.opts.transport == "tls" else None
        #: one connection per delivery lane: a receiver reads each connection on its own,
        #: so an incident's messages must always travel on the same one to stay in order
        self._conns: dict[int, _Connection] = {}
        self._pool: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        return f"{self.opts.transport}://{self.opts.host}:{self.opts.port}"

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.cfg.concurrency, thread_name_prefix=f"syslog-{self.name}"
            )

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _message(self, item: Item, payload: dict[str, Any], max_msg_chars: int | None = None) -> bytes:
        record = item.record
        is_incident = isinstance(record, Incident)
        if self.opts.payload == "cef":
            msg = cef_line(
                record,
                host=self._hostname,
                extra_fields=dict(self.cfg.extra_fields),
                max_msg_chars=max_msg_chars,
            ).encode("utf-8")
        else:
            # JSON escapes C0 itself; DEL and C1 would pass raw
            msg = escape_json_controls(orjson.dumps(payload))
        params = [
            ("incident_id" if is_incident else "alert_id", item.key),
            ("revision", item.revision),
            ("severity", str(record.severity)),
        ]
        if isinstance(record, Incident):
            params.append(("status", str(record.status)))
        sd = f"[{self.opts.sd_id} " + " ".join(f'{k}="{sd_escape(v)}"' for k, v in params) + "]"
        return rfc5424(
            pri=self._facility * 8 + SYSLOG_SEVERITY[record.severity],
            timestamp=rfc3339(record_time_ns(record)),
            hostname=self._hostname,
            app_name=self.opts.app_name,
            procid="-",
            msgid="incident" if is_incident else "alert",
            structured_data=sd,
            msg=msg,
            bom=self.opts.utf8_bom,
        )

    def encode(self, item: Item) -> bytes:
        limit = self.opts.max_message_bytes
        message = self._message(item, item.payload)
        if len(message) > limit:
            if self.opts.payload == "cef":
                summary = getattr(item.record, "summary", "") or getattr(item.record, "message", "")
                keep = max(0, len(summary) - (len(message) - limit) - 16)
                message = self._message(item, item.payload, max_msg_chars=keep)
            else:
                message = self._message(item, compact_payload(item.payload))
        if len(message) > limit:
            raise MessageTooLargeError(
                f"syslog message of {len(message)} bytes exceeds max_message_bytes={limit} when compacted"
            )
        return frame(message)

    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        results: list[ItemResult] | None = None
        frames: list[bytes] = []
        for n, item in enumerate(items):
            try:
                frames.append(self.wire(item))
            except MessageTooLargeError as exc:
                results = results or [OK] * len(items)
                results[n] = ItemResult(Status.REJECT, {"error": str(exc)})
        if frames:
            await self.start()
            lane = lane_of(items[0].key, self.cfg.concurrency)
            conn = self._conns.pop(lane, None)
            loop = asyncio.get_running_loop()
            try:
                conn = await loop.run_in_executor(self._pool, self._send_blocking, conn, b"".join(frames))
            except (OSError, ssl.SSLError) as exc:
                raise TransientError(f"syslog {self.describe()}: {type(exc).__name__}: {exc}") from exc
            self._conns[lane] = conn
        return results

    def _connect(self) -> _Connection:
        raw = socket.create_connection((self.opts.host, self.opts.port), timeout=self.cfg.timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ctx is None:
            return _Connection(raw)
        server_name = (self.cfg.tls.server_name if self.cfg.tls else "") or self.opts.host
        try:
            sock = self._ctx.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise
        # In TLS 1.3 the client's handshake completes before the server has checked the
        # client certificate; a server that refuses it closes right after. Bytes sent in
        # that window would still be TCP-acknowledged, so give the refusal a moment to
        # arrive before the first batch goes out.
        if _readable(sock, min(_TLS_SETTLE_S, self.cfg.timeout_s)) and _peer_closed(sock):
            sock.close()
            raise ConnectionRefusedError(
                "the receiver closed the TLS session after the handshake (client certificate?)"
            )
        return _Connection(sock)

    def _send_blocking(self, conn: _Connection | None, data: bytes) -> _Connection:
        if conn is not None and _peer_closed(conn.sock):
            conn.close()  # the receiver restarted since the last batch: reconnect, no backoff needed
            conn = None
        if conn is None:
            conn = self._connect()
        try:
            conn.send_all(data, self.cfg.timeout_s)
        except BaseException:
            conn.close()
            raise
        return conn
