"""Issue 13, finding 9 (deployment): the Kafka broker of docker-compose.yml and deploy/kubernetes/kafka.yaml, run
here for real: its entrypoint and broker.properties, the secrets scripts/make-secrets.sh generates, the ACLs of
deploy/kafka/acls.txt — and cadr's own components connecting to it as they are deployed.

The apache/kafka image cannot run here; the same Kafka release's jars (deploy/kafka/pom.xml) stand in for its
``kafka-storage.sh`` and ``kafka-server-start.sh`` (two shims below). Checked: only SASL_SSL clients get in;
only the sensors may write ``cadr.raw`` (the worker may read it, not write it); a sensor cannot read stories;
`cadr worker` runs its stages under its ACLs. Before the change the broker was PLAINTEXT without authentication:
any pod could publish forged events.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cadr.kafka_local import find_free_port
from cadr.runtime import spawn_cadr
from schemas.codec import encode
from schemas.settings import Settings
from streams.kafka_access import client_options
from tests.streams.store.support import event

ROOT = Path(__file__).resolve().parents[2]
KAFKA_DIR = ROOT / "deploy" / "kafka"

# Kafka protocol codes (org.apache.kafka.common.acl / resource)
_RESOURCE = {"Topic": 2, "Group": 3, "Cluster": 4}
_OPERATION = {"All": 2, "Read": 3, "Write": 4, "Create": 5, "Describe": 8}
_PATTERN = {"Literal": 3, "Prefixed": 4}
_ALLOW = 3


def read_acls(path: Path = KAFKA_DIR / "acls.txt") -> list[tuple[str, str, str, str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            principal, operation, resource, pattern, name = line.split()
            rows.append((principal, operation, resource, pattern, name))
    return rows


@dataclass
class Deployed:
    bootstrap: str
    secrets: Path

    def settings(self, user: str, data_dir: Path) -> Settings:
        s = Settings()
        s.data_dir = str(data_dir)
        s.kafka.bootstrap = self.bootstrap
        s.kafka.partitions = 1
        s.kafka.security_protocol = "SASL_SSL"
        s.kafka.sasl_username = f"cadr-{user}"
        s.kafka.sasl_password_file = str(self.secrets / f"kafka-{user}.password")
        s.kafka.ssl_cafile = str(self.secrets / "ca.crt")
        return s


def _shims(directory: Path) -> Path:
    """kafka-storage.sh and kafka-server-start.sh of the apache/kafka image, on the pinned jars."""
    classpath = subprocess.run(
        ["bash", str(KAFKA_DIR / "kafka.sh"), "classpath"], capture_output=True, text=True, check=True
    ).stdout.strip()
    directory.mkdir()
    java = f'exec java -Xms128m -Xmx384m -Dlog4j2.configurationFile={KAFKA_DIR / "log4j2.properties"} -Dkafka.logs.dir={directory} -cp "{classpath}"'
    (directory / "kafka-storage.sh").write_text(f'#!/usr/bin/env bash\n{java} kafka.tools.StorageTool "$@"\n')
    (directory / "kafka-server-start.sh").write_text(f'#!/usr/bin/env bash\n{java} kafka.Kafka "$@"\n')
    for shim in directory.iterdir():
        shim.chmod(0o755)
    return directory


async def _admin_ready(
    deployed: Deployed, tmp: Path, broker: subprocess.Popen[bytes], deadline_s: float = 120
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    settings = deployed.settings("admin", tmp)
    deadline = time.monotonic() + deadline_s
    while True:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=deployed.bootstrap, request_timeout_ms=5000, **client_options(settings.kafka)
        )
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception:
            if time.monotonic() > deadline or broker.poll() is not None:
                raise
            await asyncio.sleep(1)
        finally:
            await admin.close()


async def _apply_acls(deployed: Deployed, tmp: Path) -> None:
    """deploy/kafka/acls.txt, created through the Kafka protocol as cadr-admin (what apply-acls.sh does)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    admin = AIOKafkaAdminClient(
        bootstrap_servers=deployed.bootstrap, **client_options(deployed.settings("admin", tmp).kafka)
    )
    await admin.start()
    try:
        for principal, operation, resource, pattern, name in read_acls():
            request = CreateAclsRequest(
                _RESOURCE[resource],
                name,
                _PATTERN[pattern],
                f"User:{principal}",
                "*",
                _OPERATION[operation],
                _ALLOW,
            )
            response = await admin._send_request(request)
            errors = [c for c in response.creation_responses if c[0]]
            assert not errors, (principal, operation, resource, name, errors)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("deployed-kafka")
    secrets_dir = work / "secrets"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-secrets.sh"), str(secrets_dir)], check=True, capture_output=True
    )
    port, controller = find_free_port(), find_free_port()
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_ADVERTISED_HOST": "localhost",
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_DATA": str(work / "data"),
            "CADR_SECRETS": str(secrets_dir),
            "KAFKA_BIN": str(_shims(work / "bin")),
        }
    )
    log = (work / "broker.log").open("wb")
    broker = subprocess.Popen(
        ["bash", str(KAFKA_DIR / "entrypoint.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    result = Deployed(f"localhost:{port}", secrets_dir)
    try:
        asyncio.run(_admin_ready(result, work, broker))
        asyncio.run(_apply_acls(result, work))
        yield result
    except Exception:
        log.flush()
        print((work / "broker.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        broker.terminate()
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
        log.close()


async def _produce(settings: Settings, topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=10000, **client_options(settings.kafka)
    )
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, encode(event(f"e-{secrets.token_hex(3)}"))), 30)
    finally:
        await producer.stop()


async def _read_one(settings: Settings, topic: str, timeout_s: float) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        **client_options(settings.kafka),
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
        return [m.value for msgs in batch.values() for m in msgs if m.value is not None]
    finally:
        await consumer.stop()


def test_only_sensors_write_raw_and_the_worker_runs_under_its_acls(
    deployed: Deployed, tmp_path: Path
) -> None:
    from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

    worker_settings = deployed.settings("worker", tmp_path / "worker")
    worker = spawn_cadr("worker", ["worker"], worker_settings, {"CADR_STORE_QUERY_PORT": "0"})
    try:
        sensor = deployed.settings("sensor", tmp_path)

        async def scenario() -> list[bytes]:
            # the worker creates the topics at start; the sensor publishes once cadr.raw exists
            deadline = time.monotonic() + 120
            while True:
                try:
                    await _produce(sensor, "cadr.raw")
                    break
                except KafkaError:
                    assert worker.alive(), worker.tail(60)
                    assert time.monotonic() < deadline, "cadr.raw never became writable for cadr-sensor"
                    await asyncio.sleep(1)
            # the worker may not forge raw events, nor may a sensor read the stories
            with pytest.raises(TopicAuthorizationFailedError):
                await _produce(worker_settings, "cadr.raw")
            with pytest.raises(TopicAuthorizationFailedError):
                await _read_one(sensor, "cadr.incidents", 5)
            # the worker's stages ran under their ACLs: the event went on to cadr.events
            while time.monotonic() < deadline:
                got = await _read_one(worker_settings, "cadr.events", 3)
                if got:
                    return got
                assert worker.alive(), worker.tail(60)
            return []

        events = asyncio.run(scenario())
        assert events, worker.tail(60)
    finally:
        worker.stop()


def test_no_plaintext_or_unauthenticated_client_gets_in(deployed: Deployed, tmp_path: Path) -> None:
    from aiokafka.errors import KafkaError

    for change in (
        {"security_protocol": "PLAINTEXT"},
        {"security_protocol": "SSL"},
        {"sasl_password": "guess", "sasl_password_file": ""},
    ):
        settings = deployed.settings("sensor", tmp_path)
        for key, value in change.items():
            setattr(settings.kafka, key, value)
        with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
            asyncio.run(asyncio.wait_for(_produce(settings, "cadr.raw"), 40))
