"""A local Apache Kafka node (KRaft, broker + controller, loopback only) run as a subprocess.

It drives ``deploy/kafka/kafka.sh``: ``fetch`` (jars from Maven Central, cached per pom),
``format DATA_DIR`` and ``run DATA_DIR PORT CONTROLLER_PORT``. Used by ``cadr up`` and the test session
fixture::

    with LocalKafka() as kafka:                      # temp data dir, free ports
        asyncio.run(ensure_topics(kafka.bootstrap, topic_specs()))  # "127.0.0.1:PORT"

Take the broker away and bring it back on the same data dir and port (data intact) with
:meth:`LocalKafka.stop` + :meth:`LocalKafka.start` (connections are refused meanwhile),
:meth:`LocalKafka.kill` + :meth:`LocalKafka.start` (a crash), or :meth:`LocalKafka.pause` +
:meth:`LocalKafka.resume` (the process is frozen: connections hang).

The blocking methods take seconds; from async code call them through ``asyncio.to_thread`` (or use
:meth:`LocalKafka.astart` / :meth:`LocalKafka.astop`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from cadr.children import die_with_parent
from schemas.errors import CadrError

__all__ = [
    "KafkaStartError",
    "LocalKafka",
    "default_deploy_dir",
    "find_free_port",
    "probe_metadata",
]

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 40


class KafkaStartError(CadrError, RuntimeError):
    """The local broker could not be fetched, formatted or started; the message has the log tail."""


def default_deploy_dir() -> Path:
    """Return the repository's ``deploy/`` folder (``<repo>/deploy``, beside the ``cadr`` package).

    This reads no environment variable: a caller honouring ``CADR_DEPLOY_DIR`` passes it to
    ``LocalKafka(deploy_dir=...)`` itself.
    """
    return Path(__file__).resolve().parent.parent / "deploy"


def find_free_port(host: str = HOST, exclude: frozenset[int] = frozenset()) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now (and not in ``exclude``)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise OSError(f"no free port found on {host}")


def probe_metadata(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send one Kafka Metadata request (v4, no topics) and say whether a ready broker answered it.

    Ready means: the response lists at least one broker and a controller id. A KRaft broker only opens its
    listener once it has caught up with the metadata log, so this is true once clients can use it. Any socket
    or protocol failure counts as "not ready" (False); this never raises.
    """
    correlation_id = 0x0CAD2
    client_id = b"cadr-local-kafka"
    # Request header v1 (api_key=3 Metadata, api_version=4), then body v4: topics=[] (none),
    # allow_auto_topic_creation=false. Kafka 4 removed Metadata v0-v3 (KIP-896); v4 is the oldest it serves.
    header = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)
    request = struct.pack(">i", len(header) + len(body)) + header + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, size)
        return _parse_metadata_v4(payload, correlation_id)
    except (OSError, struct.error, ValueError):
        return False


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ValueError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _parse_metadata_v4(payload: bytes, correlation_id: int) -> bool:
    (got_correlation, _throttle_ms, n_brokers) = struct.unpack_from(">iii", payload, 0)
    if got_correlation != correlation_id:
        return False
    offset = 12
    for _ in range(n_brokers):
        offset += 4  # node_id
        (host_len,) = struct.unpack_from(">h", payload, offset)
        offset += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", payload, offset)
        offset += 2 + max(rack_len, 0)
    (cluster_id_len,) = struct.unpack_from(">h", payload, offset)
    offset += 2 + max(cluster_id_len, 0)
    (controller_id,) = struct.unpack_from(">i", payload, offset)
    return n_brokers > 0 and controller_id >= 0


def _error_lines(paths: list[Path], limit: int = 8) -> list[str]:
    """The ERROR/FATAL and ``Caused by:`` lines of the logs, for the top of an error message."""
    found: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if (
                    " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")
                ) and line not in found:
                    found.append(line)
    return found[-limit:]


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: not written)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path}: empty)"


class LocalKafka:
    """One local Kafka node (KRaft combined broker+controller) on 127.0.0.1, run through ``kafka.sh``.

    Args:
        data_dir: storage, config and logs of the node; reused (not re-formatted) when it already holds a
            formatted node. ``None``: a new temporary directory, removed by :meth:`close`.
        port: client (PLAINTEXT) port; ``None``: a free port, chosen at the first start and kept afterwards.
        controller_port: KRaft controller port; ``None``: like ``port``.
        deploy_dir: the repository's ``deploy/`` folder holding ``kafka/kafka.sh`` (default
            :func:`default_deploy_dir`; pass ``CADR_DEPLOY_DIR`` here to override).
        kafka_home: jar cache directory (``CADR_KAFKA_HOME`` for kafka.sh); ``None``: kafka.sh's default
            ``~/.cache/cadr/kafka-<version>`` (or ``CADR_KAFKA_HOME`` already in the environment).
        heap_opts: JVM heap flags (``KAFKA_HEAP_OPTS``); ``None``: kafka.sh's ``-Xms256m -Xmx768m``.
        startup_timeout: seconds to wait for the broker to answer metadata requests.
        stop_timeout: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        fetch_timeout: seconds allowed for the first jar download through Maven.
        env: extra environment variables for kafka.sh (e.g. ``JAVA_HOME``, ``KAFKA_OPTS``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        deploy_dir: str | os.PathLike[str] | None = None,
        kafka_home: str | os.PathLike[str] | None = None,
        heap_opts: str | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        fetch_timeout: float = 900.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self._owns_data_dir = data_dir is None
        self._port = port
        self._controller_port = controller_port
        self._ports_chosen_here = port is None and controller_port is None
        self.deploy_dir = Path(deploy_dir) if deploy_dir is not None else default_deploy_dir()
        self.kafka_home = Path(kafka_home) if kafka_home is not None else None
        self.heap_opts = heap_opts
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.fetch_timeout = fetch_timeout
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._paused = False
        self.last_start_seconds: float | None = None

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def script(self) -> Path:
        """``deploy/kafka/kafka.sh``."""
        return self.deploy_dir / "kafka" / "kafka.sh"

    @property
    def data_dir(self) -> Path:
        """The node's data directory (created at the first :meth:`start` when none was given)."""
        if self._data_dir is None:
            raise RuntimeError("LocalKafka has no data dir before start()")
        return self._data_dir

    @property
    def port(self) -> int:
        """Client port (known after the first :meth:`start` when chosen automatically)."""
        if self._port is None:
            raise RuntimeError("LocalKafka has no port before start()")
        return self._port

    @property
    def controller_port(self) -> int:
        """KRaft controller port."""
        if self._controller_port is None:
            raise RuntimeError("LocalKafka has no controller port before start()")
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``: aiokafka's ``bootstrap_servers``; Faust's broker is ``"kafka://" + this``."""
        return f"{HOST}:{self.port}"

    @property
    def server_log(self) -> Path:
        """The broker's log4j log (``DATA_DIR/logs/server.log``)."""
        return self.data_dir / "logs" / "server.log"

    @property
    def console_log(self) -> Path:
        """kafka.sh's and the JVM's stdout/stderr (``DATA_DIR/logs/kafka.out``)."""
        return self.data_dir / "logs" / "kafka.out"

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM (kafka.sh execs java), or None when not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def fetch(self) -> None:
        """Fetch the Kafka jars (``kafka.sh fetch``): a no-op once cached for this pom."""
        self._script_checked()
        self._run_script(["fetch"], timeout=self.fetch_timeout, what="fetching the Kafka jars")

    def start(self) -> Self:
        """Fetch, format (first time only) and launch the broker, then wait until it serves metadata.

        Calling it again after :meth:`stop` or :meth:`kill` restarts on the same data dir and ports.
        Returns ``self``. Raises :class:`KafkaStartError` (with the broker log tail) on failure.
        """
        if self.running:
            return self
        started = time.monotonic()
        self.fetch()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="cadr-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._run_script(["format", str(self.data_dir)], timeout=120.0, what="formatting Kafka storage")
        # Ports picked here may be re-picked on the first start only: a restart keeps the bootstrap address.
        attempts = 3 if self._ports_chosen_here and self.last_start_seconds is None else 1
        for attempt in range(1, attempts + 1):
            self._choose_ports()
            try:
                self._launch_and_wait()
                break
            except KafkaStartError as exc:
                # A free port picked here can be taken by someone else before the JVM binds it: pick again.
                if attempt < attempts and "Address already in use" in str(exc):
                    self._port = self._controller_port = None
                    continue
                raise
        self.last_start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the broker: SIGTERM (clean shutdown), SIGKILL after ``timeout`` (default ``stop_timeout``).

        The data dir and ports are kept, so :meth:`start` brings the same node back. No-op when not running.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._forget_process()

    def kill(self) -> None:
        """Kill the broker with SIGKILL (a crash: no clean shutdown). :meth:`start` recovers the same data."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._forget_process()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it keeps its sockets but answers nothing until :meth:`resume`."""
        if not self.running:
            raise RuntimeError("LocalKafka is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True
        # SIGSTOP is asynchronous: wait until the kernel reports the process stopped, so a
        # caller's next request really meets a frozen broker
        if self._proc is not None:
            deadline = time.monotonic() + 5.0
            stat = Path(f"/proc/{self._proc.pid}/stat")
            while time.monotonic() < deadline:
                try:
                    state = stat.read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    break
                if state in ("T", "t"):
                    break
                time.sleep(0.01)

    def resume(self) -> None:
        """Unfreeze a broker frozen by :meth:`pause` (SIGCONT)."""
        if self.running and self._paused:
            self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """:meth:`stop` then :meth:`start` on the same data dir and ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove the data dir if this object created it."""
        self.stop()
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    async def astart(self) -> Self:
        """:meth:`start` in a worker thread, for async callers."""
        return await asyncio.to_thread(self.start)

    async def astop(self, timeout: float | None = None) -> None:
        """:meth:`stop` in a worker thread, for async callers."""
        await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"LocalKafka({state}, port={self._port}, data_dir={str(self._data_dir)!r})"

    # -- internals -------------------------------------------------------------------------------------------

    def _script_checked(self) -> Path:
        if not self.script.is_file():
            raise KafkaStartError(
                f"{self.script} not found: deploy_dir={self.deploy_dir} is not the repository's deploy/ "
                "folder (pass LocalKafka(deploy_dir=...) or set CADR_DEPLOY_DIR)"
            )
        return self.script

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kafka_home is not None:
            env["CADR_KAFKA_HOME"] = str(self.kafka_home)
        if self.heap_opts is not None:
            env["KAFKA_HEAP_OPTS"] = self.heap_opts
        env.update(self.extra_env)
        return env

    def _run_script(self, args: list[str], *, timeout: float, what: str) -> None:
        cmd = ["bash", str(self._script_checked()), *args]
        try:
            done = subprocess.run(
                cmd,
                env=self._env(),
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaStartError(f"{what} took over {timeout:.0f}s: {' '.join(cmd)}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            raise KafkaStartError(
                f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n"
                + "\n".join(output[-_LOG_TAIL_LINES:])
            )

    def _choose_ports(self) -> None:
        if self._port is None:
            self._port = find_free_port(exclude=frozenset({self._controller_port or 0}))
        if self._controller_port is None:
            self._controller_port = find_free_port(exclude=frozenset({self._port}))

    def _launch_and_wait(self) -> None:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        out = self.console_log.open("ab")
        cmd = ["bash", str(self.script), "run", str(self.data_dir), str(self.port), str(self.controller_port)]
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        # Own session: a Ctrl-C meant for the parent does not reach the broker; stop() and the atexit hook do.
        # A parent killed outright (SIGTERM/SIGKILL: no atexit) takes the broker with it: no orphan broker
        # keeps the port and the CPU.
        self._proc = subprocess.Popen(
            cmd,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._out = out
        self._paused = False
        atexit.register(self._atexit_kill)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget_process()
                raise self._start_error(f"the Kafka broker exited with code {code} during startup")
            if probe_metadata(HOST, self.port, timeout=1.0):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise self._start_error(
                    f"the Kafka broker did not serve metadata within {self.startup_timeout:.0f}s"
                )
            time.sleep(0.1)

    def _start_error(self, headline: str) -> KafkaStartError:
        errors = "\n".join(_error_lines([self.console_log, self.server_log])) or "(none logged)"
        return KafkaStartError(
            f"{headline} (bootstrap {HOST}:{self._port}, data dir {self._data_dir})\n"
            f"--- errors ---\n{errors}\n"
            f"--- tail of {self.console_log} ---\n{_tail(self.console_log)}\n"
            f"--- tail of {self.server_log} ---\n{_tail(self.server_log)}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def _forget_process(self) -> None:
        atexit.unregister(self._atexit_kill)
        if self._out is not None:
            self._out.close()
            self._out = None
        self._proc = None
        self._paused = False

    def _atexit_kill(self) -> None:
        # The broker runs in its own session and would outlive an interpreter that forgot to stop it.
        if self._proc is not None and self._proc.poll() is None:
            if self._paused:
                self._signal(signal.SIGCONT)
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
