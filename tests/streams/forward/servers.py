"""Real HTTP(S) servers on 127.0.0.1 that speak the receivers' documented wire formats.

- :class:`HecServer`: Splunk HTTP Event Collector — ``POST /services/collector/event`` with
  ``Authorization: Splunk <token>``, a body of concatenated JSON event objects, replies
  ``{"text": "Success", "code": 0}`` or the documented error codes (2/3/4 auth, 5 no data,
  6 invalid data format with ``invalid-event-number``, 7 incorrect index, 9 server busy,
  10 channel missing, 12 event field required, 13 event blank) and, with ``ack=True``,
  indexer acknowledgment through ``/services/collector/ack``.
- :class:`BulkServer`: Elasticsearch / OpenSearch ``POST /_bulk`` — NDJSON action and source
  lines ending in a newline, replies ``{"took", "errors", "items": [...]}`` with per-item
  ``status`` and ``error`` objects; ``create`` of an existing ``_id`` is a 409
  ``version_conflict_engine_exception``.
- :class:`WebhookServer`: a plain JSON webhook (array, NDJSON or single object).
- :class:`Rsyslogd`: Debian's rsyslogd on a free loopback port (TCP, TLS, mutual TLS)
  writing what it parsed of each message to a file.

Each server can be stopped and started again on the same port (an outage), can be told
to fail the next requests with a given status (faults), to refuse chosen records, and
to stall a request after storing it (a response lost in flight). Used by the forwarder
tests and by ``bench/forward.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import ssl
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

__all__ = [
    "BulkServer",
    "Fault",
    "HecServer",
    "HttpServer",
    "Rsyslogd",
    "WebhookServer",
    "free_port",
    "make_incident",
]


def _listening(port: int) -> bool:
    """Whether some socket is in LISTEN state on 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fault:
    """A canned reply for the next request (status, JSON body, headers)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class HttpServer:
    """An aiohttp server on 127.0.0.1 that can go down and come back on the same port."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        self.ssl_context = ssl_context
        self.port = port or free_port()
        self.faults: deque[Fault] = deque()
        self.requests = 0
        #: set when a request was stalled (stored, then left without a reply)
        self.stalled = asyncio.Event()
        #: stall the request with this number (1-based) after storing it
        self.stall_request: int | None = None
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        await self.stop()

    def fail_next(
        self, count: int, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        for _ in range(count):
            self.faults.append(Fault(status, body, headers or {}))

    def release(self) -> None:
        """Let a stalled request finish (its client is usually gone by then)."""
        self._release.set()

    def _fault(self) -> web.Response | None:
        self.requests += 1
        if self.faults:
            f = self.faults.popleft()
            return web.json_response(f.body, status=f.status, headers=f.headers)
        return None

    async def _maybe_stall(self) -> None:
        if self.stall_request is not None and self.requests == self.stall_request:
            self.stalled.set()
            await self._release.wait()


def _json_objects(body: bytes) -> list[Any]:
    """Concatenated JSON values (HEC's batch form), whitespace between them allowed.

    A value that does not parse ends the list with an ``_Invalid`` marker at its index.
    """
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            out.append(_INVALID)
            return out
        out.append(value)


_INVALID = object()


class HecServer(HttpServer):
    """Splunk HTTP Event Collector."""

    def __init__(
        self,
        *,
        token: str = "hec-token",
        indexes: tuple[str, ...] = ("main", "security"),
        ack: bool = False,
        ack_after_polls: int = 1,
        invalid: Callable[[dict[str, Any]], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.token = token
        self.indexes = indexes
        self.ack = ack
        self.ack_after_polls = ack_after_polls
        #: events for which this returns True are answered as code 6 (invalid data format)
        self.invalid = invalid
        #: every event accepted, in arrival order (the HEC envelope, with "event" inside)
        self.events: list[dict[str, Any]] = []
        self._acks: dict[int, int] = {}  # ackId -> polls seen
        self._next_ack = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/collector/event", self.handle_event)
        app.router.add_post("/services/collector", self.handle_event)
        app.router.add_post("/services/collector/ack", self.handle_ack)

    @staticmethod
    def _reply(status: int, code: int, text: str, **extra: Any) -> web.Response:
        return web.json_response({"text": text, "code": code, **extra}, status=status)

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return self._reply(401, 2, "Token is required")
        scheme, _, token = header.partition(" ")
        if scheme != "Splunk":
            return self._reply(401, 3, "Invalid authorization")
        if token != self.token:
            return self._reply(403, 4, "Invalid token")
        return None

    async def handle_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        fault = self._fault()
        if fault is not None:
            return fault
        denied = self._auth(request)
        if denied is not None:
            return denied
        channel = request.headers.get("X-Splunk-Request-Channel") or request.query.get("channel")
        if self.ack and not channel:
            return self._reply(400, 10, "Data channel is missing")
        if not body.strip():
            return self._reply(400, 5, "No data")
        for n, ev in enumerate(_json_objects(body)):
            # HEC indexes events up to the first bad one and names it (invalid-event-number).
            if ev is _INVALID or not isinstance(ev, dict):
                return self._reply(400, 6, "Invalid data format", **{"invalid-event-number": n})
            if "event" not in ev:
                return self._reply(400, 12, "Event field is required", **{"invalid-event-number": n})
            if ev["event"] in ("", None, {}):
                return self._reply(400, 13, "Event field cannot be blank", **{"invalid-event-number": n})
            if "index" in ev and ev["index"] not in self.indexes:
                return self._reply(400, 7, "Incorrect index", **{"invalid-event-number": n})
            if self.invalid is not None and self.invalid(ev):
                return self._reply(400, 6, "Invalid data format", **{"invalid-event-number": n})
            self.events.append(ev)
        await self._maybe_stall()
        if self.ack:
            ack_id = self._next_ack
            self._next_ack += 1
            self._acks[ack_id] = 0
            return web.json_response({"text": "Success", "code": 0, "ackId": ack_id})
        return self._reply(200, 0, "Success")

    async def handle_ack(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not self.ack:
            return self._reply(400, 14, "ACK is disabled")
        data = json.loads(await request.read() or b"{}")
        out: dict[str, bool] = {}
        for ack_id in data.get("acks", []):
            polls = self._acks.get(ack_id)
            if polls is None:
                out[str(ack_id)] = False
                continue
            self._acks[ack_id] = polls + 1
            out[str(ack_id)] = polls + 1 >= self.ack_after_polls
        return web.json_response({"acks": out})


class BulkServer(HttpServer):
    """Elasticsearch / OpenSearch ``_bulk``."""

    def __init__(
        self,
        *,
        item_status: Callable[[str, dict[str, Any]], int] | None = None,
        api_key: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: (doc id, source) -> status to answer for that item (201 = store it)
        self.item_status = item_status
        self.api_key = api_key
        #: index -> _id -> source, as a real index keeps documents
        self.indices: dict[str, dict[str, dict[str, Any]]] = {}
        #: (index, _id) of every document created, in arrival order
        self.arrivals: list[tuple[str, str]] = []
        self.conflicts = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/_bulk", self.handle_bulk)
        app.router.add_post("/{index}/_bulk", self.handle_bulk)

    @staticmethod
    def _error(status: int, etype: str, reason: str) -> web.Response:
        return web.json_response(
            {
                "error": {"root_cause": [{"type": etype, "reason": reason}], "type": etype, "reason": reason},
                "status": status,
            },
            status=status,
        )

    async def handle_bulk(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        body = await request.read()
        fault = self._fault()
        if fault is not None:
            return fault
        if self.api_key and request.headers.get("Authorization") != f"ApiKey {self.api_key}":
            return self._error(
                401, "security_exception", "missing authentication credentials for REST request"
            )
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype not in ("application/x-ndjson", "application/json"):
            return self._error(
                406, "media_type_header_exception", f"Content-Type header [{ctype}] is not supported"
            )
        if not body.endswith(b"\n"):
            return self._error(
                400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]"
            )
        lines = body.split(b"\n")[:-1]
        default_index = request.match_info.get("index", "")
        items: list[dict[str, Any]] = []
        errors = False
        i = 0
        while i < len(lines):
            try:
                action = json.loads(lines[i])
                ((op, meta),) = action.items()
            except (ValueError, AttributeError):
                return self._error(400, "x_content_parse_exception", f"line {i + 1}: malformed action")
            if op not in ("create", "index"):
                return self._error(400, "illegal_argument_exception", f"unsupported action [{op}]")
            if i + 1 >= len(lines):
                return self._error(400, "action_request_validation_exception", "source is missing")
            index = meta.get("_index") or default_index
            doc_id = meta.get("_id") or f"auto-{len(self.arrivals)}"
            try:
                source = json.loads(lines[i + 1])
            except ValueError as exc:
                items.append(
                    {
                        op: {
                            "_index": index,
                            "_id": doc_id,
                            "status": 400,
                            "error": {
                                "type": "mapper_parsing_exception",
                                "reason": f"failed to parse: {exc}",
                            },
                        }
                    }
                )
                errors = True
                i += 2
                continue
            i += 2
            status = self.item_status(doc_id, source) if self.item_status else 201
            docs = self.indices.setdefault(index, {})
            if status == 201 and op == "create" and doc_id in docs:
                status = 409
            if status in (200, 201):
                created = doc_id not in docs
                docs[doc_id] = source
                self.arrivals.append((index, doc_id))
                items.append(
                    {
                        op: {
                            "_index": index,
                            "_id": doc_id,
                            "_version": 1,
                            "result": "created" if created else "updated",
                            "status": 201 if created else 200,
                            "_seq_no": len(self.arrivals) - 1,
                            "_primary_term": 1,
                            "_shards": {"total": 1, "successful": 1, "failed": 0},
                        }
                    }
                )
                continue
            errors = True
            if status == 409:
                self.conflicts += 1
                error = {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists (current version [1])",
                }
            elif status == 429:
                error = {
                    "type": "es_rejected_execution_exception",
                    "reason": "rejected execution of coordinating operation",
                }
            else:
                error = {"type": "mapper_parsing_exception", "reason": f"failed to parse document [{doc_id}]"}
            items.append({op: {"_index": index, "_id": doc_id, "status": status, "error": error}})
        await self._maybe_stall()
        took = int((time.monotonic() - started) * 1000)
        return web.json_response({"took": took, "errors": errors, "items": items})

    def documents(self, index: str) -> dict[str, dict[str, Any]]:
        return self.indices.get(index, {})


class WebhookServer(HttpServer):
    """A JSON webhook at ``/hook`` (array, NDJSON or single object bodies)."""

    def __init__(self, *, user: str = "", password: str = "", bearer: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user = user
        self.password = password
        self.bearer = bearer
        #: every record received, in arrival order
        self.records: list[Any] = []
        #: headers of every request, in order
        self.headers: list[dict[str, str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.handle)
        app.router.add_put("/hook", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        fault = self._fault()
        if fault is not None:
            return fault
        if self.bearer and request.headers.get("Authorization") != f"Bearer {self.bearer}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.user:
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.json_response({"error": "unauthorized"}, status=401)
        self.headers.append(dict(request.headers))
        try:
            if request.content_type == "application/x-ndjson":
                records = [json.loads(line) for line in body.splitlines() if line.strip()]
            else:
                data = json.loads(body)
                records = data if isinstance(data, list) else [data]
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        self.records.extend(records)
        await self._maybe_stall()
        return web.json_response({"accepted": len(records)}, status=202)


# --- rsyslogd: a real syslog daemon from Debian -------------------------------------------

TEMPLATE = "%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\\n"


class Rsyslogd:
    """One rsyslogd listening on 127.0.0.1:port, writing what it parsed to ``out``."""

    def __init__(self, workdir: Path, *, tls: str = "", ca: trustme.CA | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = self.dir / "out.log"
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        driver = ""
        tls_global = ""
        if tls:
            assert ca is not None
            server = ca.issue_cert("127.0.0.1", "localhost")
            ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
            server.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
            server.private_key_pem.write_to_path(str(self.dir / "server.key"))
            tls_global = (
                f' DefaultNetstreamDriverCAFile="{self.dir}/ca.pem"'
                f' DefaultNetstreamDriverCertFile="{self.dir}/server.pem"'
                f' DefaultNetstreamDriverKeyFile="{self.dir}/server.key"'
            )
            driver = f' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{tls}"'
        (self.dir / "rsyslog.conf").write_text(
            f'global(workDirectory="{self.dir}" maxMessageSize="256k"{tls_global})\n'
            f'module(load="imtcp"{driver})\n'
            f'template(name="parsed" type="string" string="{TEMPLATE}")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            f'action(type="omfile" file="{self.out}" template="parsed")\n'
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(self.dir / "rsyslog.conf"), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=(self.dir / "rsyslogd.stdout").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.dir / 'rsyslogd.stdout').read_text()}")
            # look for the LISTEN socket itself: a probe connect() can "succeed" against nobody
            # (Linux TCP self-connect when the port is in the ephemeral range)
            if _listening(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen within 15 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [line.split("|", 6) for line in self.out.read_text().splitlines()]

    async def wait_lines(self, count: int, timeout: float = 30) -> list[list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)
        raise AssertionError(f"rsyslogd wrote {len(self.lines())} lines, expected {count}")


# --- records the tests and the benchmark send ------------------------------------------


def make_incident(
    n: int,
    revision: int = 1,
    *,
    severity: str = "high",
    namespace: str = "shop",
    timeline: int = 3,
    prefix: str = "inc",
) -> Any:
    """Incident number ``n`` at ``revision``: a small but complete story."""
    from schemas.records import Actor, AlertRef, Edge, Incident, Severity, TimelineEntry, Workload

    t0 = 1_790_000_000_000_000_000 + n * 1_000_000_000
    sev = Severity(severity)
    return Incident(
        incident_id=f"{prefix}-{n:06d}",
        revision=revision,
        severity=sev,
        title=f"Shell in web-{n}, then token read",
        summary=f"Story {n} rev {revision}: alice ran kubectl exec into web-{n}; /bin/sh read the token.",
        first_seen=t0,
        last_seen=t0 + revision * 1_000_000_000,
        updated=t0 + revision * 1_000_000_000,
        workloads=[
            Workload(
                cluster="prod",
                namespace=namespace,
                pod=f"web-{n}",
                container="web",
                container_id=f"c{n:011d}",
                workload_kind="Deployment",
                workload_name="web",
                image="registry.example/web:1.4.2",
            )
        ],
        actors=[Actor(kind="user", name="alice@example.com")],
        mitre=["T1609", "T1059.004"],
        alerts=[
            AlertRef(
                alert_id=f"al-{n}-{r}",
                rule_id="R-SHELL",
                rule_name="Shell in container",
                severity=sev,
                time=t0 + r,
                message="/bin/sh started by kubectl exec",
            )
            for r in range(revision)
        ][:5],
        timeline=[
            TimelineEntry(
                time=t0 + i, event_id=f"e-{n}-{i}", kind="process_exec", text=f"step {i} of the story"
            )
            for i in range(timeline)
        ],
        edges=[Edge(src=f"e-{n}-0", dst=f"e-{n}-1", kind="parent_child")],
    )
