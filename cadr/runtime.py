"""Running cadr's pieces on one machine: the embedded Kafka, topics, child processes.

Used by ``cadr up``, ``cadr demo`` and ``cadr worker``: when no ``--kafka`` is given they
start the embedded broker under the data dir, so the same commands work on a laptop and
against a production cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cadr.children import die_with_parent
from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.topics import edits_spec, topic_specs

__all__ = [
    "ChildProcess",
    "embedded_kafka",
    "ensure_topics_sync",
    "relax_cyclic_gc",
    "settings_env",
    "spawn_cadr",
]

#: young-generation threshold of the cyclic collector in cadr's streaming processes (worker, audit sensor).
#: They allocate short-lived objects by the hundred thousand per second: the store, the consumer's record and
#: its coordinate for each of ~20k records per batch; the audit webhook, tens of thousands of dicts per body.
#: With CPython's default of 700 the collector ran ~1,800 times and scanned the whole heap 14 times over a
#: 3M-event store ingest: 1.6 s, 5.8% of the sink's CPU; at 50,000: 18 young collections, no full scan,
#: 0.38 s. For the audit webhook, with the freeze, it halved the per-event cost. These objects form no
#: cycles; what does is still collected, only less often.
GC_GEN0_THRESHOLD = 50_000

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_kafka(settings: Settings, *, port: int = 0) -> Iterator[str]:
    """Yield a bootstrap address: the configured one, or an embedded broker started here."""
    if settings.kafka.bootstrap:
        yield settings.kafka.bootstrap
        return
    from cadr.kafka_local import LocalKafka

    data_dir = Path(settings.data_dir).resolve() / "kafka"
    kafka = LocalKafka(data_dir=data_dir, port=port or None)
    print(f"cadr: starting embedded Kafka in {data_dir} ...", file=sys.stderr, flush=True)
    kafka.start()
    try:
        settings.kafka.bootstrap = kafka.bootstrap
        print(f"cadr: Kafka ready at {kafka.bootstrap}", file=sys.stderr, flush=True)
        yield kafka.bootstrap
    finally:
        kafka.stop()
        settings.kafka.bootstrap = ""


def ensure_topics_sync(settings: Settings) -> None:
    """Create the pipeline topics and ``profile-edits`` (idempotent), and wait for their leaders.

    The worker's profile-edits agent subscribes to ``profile-edits``: left missing, the subscription would have
    the broker auto-create it with the broker's default partition count (not co-partitioned with the events,
    so edits would reach the wrong worker and ``cadr profiles`` refuses it), and a group formed before it has
    leaders ignores it until a later metadata refresh.
    """
    from cadr.topics import ensure_topics
    from streams.kafka_access import client_options

    prefix, partitions = settings.kafka.topic_prefix, settings.kafka.partitions
    specs = [*topic_specs(prefix, partitions), edits_spec(prefix, partitions)]
    asyncio.run(ensure_topics(settings.kafka.bootstrap, specs, client_options=client_options(settings.kafka)))


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that hands ``settings`` to a child ``cadr`` process."""
    env = dict(os.environ)
    env.update(
        {
            "CADR_DATA_DIR": str(Path(settings.data_dir).resolve()),
            "CADR_CLUSTER": settings.cluster,
            "CADR_NODE": settings.node,
            "CADR_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
            "CADR_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "CADR_KAFKA_PARTITIONS": str(settings.kafka.partitions),
            # how to reach Kafka (TLS / SASL): the children connect as the parent does
            "CADR_KAFKA_SECURITY_PROTOCOL": settings.kafka.security_protocol,
            "CADR_KAFKA_SASL_MECHANISM": settings.kafka.sasl_mechanism,
            "CADR_KAFKA_SASL_USERNAME": settings.kafka.sasl_username,
            "CADR_KAFKA_SASL_PASSWORD_FILE": settings.kafka.sasl_password_file,
            "CADR_KAFKA_SASL_PASSWORD": settings.kafka.sasl_password,
            "CADR_KAFKA_SSL_CAFILE": settings.kafka.ssl_cafile,
            "CADR_KAFKA_SSL_CERTFILE": settings.kafka.ssl_certfile,
            "CADR_KAFKA_SSL_KEYFILE": settings.kafka.ssl_keyfile,
            "CADR_KAFKA_SSL_CHECK_HOSTNAME": str(settings.kafka.ssl_check_hostname).lower(),
            "CADR_STORE_DSN": settings.store_dsn,
            "CADR_STORE_BATCH_SIZE": str(settings.store.batch_size),
            "CADR_STORE_BATCH_BYTES": str(settings.store.batch_bytes),
            "CADR_STORE_FLUSH_INTERVAL_S": str(settings.store.flush_interval_s),
            "CADR_WORKER_BATCH_SIZE": str(settings.worker.batch_size),
            "CADR_WORKER_APP_ID": settings.worker.app_id,
            "CADR_DETECT_LEARNING_WINDOW_S": str(settings.detect.learning_window_s),
            "CADR_CORRELATE_INACTIVITY_CLOSE_S": str(settings.correlate.inactivity_close_s),
        }
    )
    return env


class ChildProcess:
    """A supervised child process whose output goes to a log file under the data dir."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # no orphan worker or sensor when cadr up is killed outright
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def relax_cyclic_gc(*, freeze: bool = False) -> None:
    """Raise the cyclic collector's thresholds for a streaming process (never lowers them, and leaves a
    collector switched off with a threshold of 0 off). ``freeze``: also move what exists now out of the
    collector's sight (call it once, after start-up: later collections no longer rescan those objects)."""
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, max(gen1, 20), max(gen2, 100))
    if freeze:
        gc.collect()
        gc.freeze()


def spawn_cadr(
    name: str, args: list[str], settings: Settings, extra_env: dict[str, str] | None = None
) -> ChildProcess:
    """Start ``cadr ARGS`` as a child with ``settings`` passed through the environment."""
    env = settings_env(settings)
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "cadr.cli", *args]
    return ChildProcess(name, argv, env, Path(settings.data_dir).resolve() / "logs")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate()`` until true; raise a clear error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise CadrError(f"timed out after {timeout:.0f}s waiting for {what}")
