"""Test helper: a stand-in ClickHouse server — ClickHouse's HTTP interface over a chdb directory, in a child
process that tests can stop and start again on the same port (a store that goes away and comes back).

No modern ClickHouse server installs on these machines; the engine is the same (chdb is ClickHouse in
process), and clickhouse-connect talks to this exactly as to a server (see streams/store/endpoint.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cadr.kafka_local import find_free_port

__all__ = ["ClickHouseHttp"]


class ClickHouseHttp:
    """``start()`` / ``stop()`` a writable endpoint for ``data_dir`` on a fixed loopback port.

    With ``user``/``password`` it requires them (as a server with a password-protected user does); with
    ``tls`` = (certificate, key, CA file) it serves https only.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        user: str = "",
        password: str = "",
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or find_free_port()
        self.user = user
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + "-http.log")

    @property
    def dsn(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ClickHouseHttp:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir.with_name(self.data_dir.name + "-http.ready")
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.store.endpoint",
                "--dsn",
                f"chdb://{self.data_dir}",
                "--port",
                str(self.port),
                "--writable",
                "--ready-file",
                str(ready),
                *(["--user", self.user] if self.user else []),
                *(["--password", self.password] if self.password else []),
                *(["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] if self.tls else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ClickHouse HTTP stand-in exited: {self.log_tail()}")
            if ready.exists() and self._ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ClickHouse HTTP stand-in not ready in {timeout}s: {self.log_tail()}")

    def _ping(self) -> bool:
        try:
            context = ssl.create_default_context(cafile=str(self.tls[2])) if self.tls else None
            with urllib.request.urlopen(f"{self.dsn}/ping", timeout=2, context=context) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ClickHouseHttp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
