"""Issue 13, finding 9 (Kafka): every cadr Kafka client speaks TLS + SASL/SCRAM when configured to.

A real Apache Kafka broker with a SASL_SSL listener (SCRAM users written at format time, a PEM certificate from
a test CA) on loopback. Through that listener only: topic creation, the sensors' publisher, the audit sink, the
worker (`cadr worker` as a subprocess: Faust and the store consumer), replay, capture, profile edits and
`cadr incidents tail`. A wrong password, a client without TLS and a client that does not trust the broker's CA
are refused. Before the change no client had these settings: they all spoke PLAINTEXT to the SASL_SSL port.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from cadr.kafka_local import LocalKafka, find_free_port
from cadr.runtime import settings_env, spawn_cadr
from cadr.topics import ensure_topics
from schemas.codec import encode
from schemas.records import ProfileEdit, ProfileEditOp
from schemas.settings import Settings
from schemas.topics import edits_spec, topic_specs
from streams.kafka_access import KafkaAccessError, client_options
from tests.streams.store.support import event


@dataclass
class SecureKafka:
    kafka: LocalKafka
    bootstrap: str  # the SASL_SSL listener
    ca_file: Path
    passwords: dict[str, Path]

    def settings(self, user: str, data_dir: Path, prefix: str) -> Settings:
        s = Settings()
        s.data_dir = str(data_dir)
        s.kafka.bootstrap = self.bootstrap
        s.kafka.topic_prefix = prefix
        s.kafka.partitions = 1
        s.kafka.security_protocol = "SASL_SSL"
        s.kafka.sasl_mechanism = "SCRAM-SHA-512"
        s.kafka.sasl_username = user
        s.kafka.sasl_password_file = str(self.passwords[user])
        s.kafka.ssl_cafile = str(self.ca_file)
        s.worker.app_id = f"{prefix}app"
        return s


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    work = tmp_path_factory.mktemp("secure-kafka")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    keystore = work / "broker.pem"
    # Kafka's PEM keystore reads an unencrypted PKCS#8 key (trustme writes the traditional OpenSSL form)
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in server.cert_chain_pems))
    keystore.chmod(0o600)
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    users = {name: secrets.token_hex(16) for name in ("cadr-worker", "cadr-sensor")}
    users_file = work / "scram-users"
    users_file.write_text("".join(f"{n} {p}\n" for n, p in users.items()))
    users_file.chmod(0o600)
    passwords = {}
    for name, password in users.items():
        path = work / f"{name}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        passwords[name] = path
    port = find_free_port()
    env = {
        "CADR_KAFKA_SASL_SSL_PORT": str(port),
        "CADR_KAFKA_SSL_KEYSTORE": str(keystore),
        "CADR_KAFKA_SCRAM_USERS": str(users_file),
    }
    kafka = LocalKafka(work / "kafka", heap_opts="-Xms128m -Xmx384m", env=env)
    kafka.start()
    try:
        yield SecureKafka(kafka, f"127.0.0.1:{port}", ca_file, passwords)
    finally:
        kafka.close()


async def _values(settings: Settings, topic: str, want: int, timeout_s: float = 60.0) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        **client_options(settings.kafka),
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got.extend(m.value for msgs in batch.values() for m in msgs if m.value is not None)
    finally:
        await consumer.stop()
    return got


async def test_every_client_connects_over_sasl_ssl(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    from sensors.audit.sink import KafkaSink
    from sensors.publisher import Publisher
    from streams.forensics.capture import capture_from_topic
    from streams.forensics.replay import replay
    from streams.profiles import publish_edits

    prefix = f"s{secrets.token_hex(3)}."
    sensor = secure_kafka.settings("cadr-sensor", tmp_path, prefix)
    await ensure_topics(
        sensor.kafka.bootstrap,
        [*topic_specs(prefix, 1), edits_spec(prefix, 1)],
        client_options=client_options(sensor.kafka),
    )
    # the eBPF sensor's publisher
    async with Publisher(
        sensor.kafka.bootstrap,
        sensor.topic("raw"),
        str(tmp_path / "spool"),
        kafka_options=client_options(sensor.kafka),
    ) as publisher:
        await publisher.publish(event("sasl-1"))
        assert await publisher.flush(30) and publisher.acked == 1
    # the audit intake's sink
    sink = KafkaSink(
        sensor.kafka.bootstrap,
        sensor.topic("raw"),
        sensor.topic("dlq"),
        kafka_options=client_options(sensor.kafka),
    )
    await sink.start()
    try:
        await sink.publish([(b"sasl-2", encode(event("sasl-2")))], [])
    finally:
        await sink.stop()
    # replay, as `cadr replay` runs it
    report = await replay(
        [encode(event("sasl-3"))],
        bootstrap=sensor.kafka.bootstrap,
        topic=sensor.topic("raw"),
        kafka_options=client_options(sensor.kafka),
    )
    assert report.published == 1
    raw = await _values(sensor, sensor.topic("raw"), 3)
    ids = sorted(
        orjson.loads(v)["event_id"] if v.startswith(b"{") else orjson.loads(v)[0]["event_id"] for v in raw
    )
    assert ids == ["sasl-1", "sasl-2", "sasl-3"]
    # capture of a topic, and profile edits
    captured = await asyncio.to_thread(
        capture_from_topic,
        sensor.kafka.bootstrap,
        sensor.topic("raw"),
        tmp_path / "raw.jsonl",
        kafka_options=client_options(sensor.kafka),
    )
    assert captured == 3
    edit = ProfileEdit(
        edit_id="e1", time=time.time_ns(), workload_key="c/ns/Deployment/w", op=ProfileEditOp.RELEARN
    )
    assert await publish_edits(sensor, [edit]) == 1


def test_the_worker_and_incidents_tail_run_over_sasl_ssl(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """`cadr worker` (Faust agents and the store consumer) and `cadr incidents tail`, configured only through
    the documented settings (environment variables here)."""
    prefix = f"w{secrets.token_hex(3)}."
    settings = secure_kafka.settings("cadr-worker", tmp_path / "data", prefix)
    settings.detect.learning_window_s = 0
    # the settings reach the worker as `cadr up` hands them to its children: CADR_* environment variables
    worker = spawn_cadr("worker", ["worker"], settings, {"CADR_STORE_QUERY_PORT": "0"})
    try:
        # a shell in a container: the worker enriches it into <prefix>events and stores it
        shell = event("sasl-shell", kind="process_exec")
        assert shell.process is not None
        shell.process.exe, shell.process.args = "/bin/bash", ["bash", "-i"]

        async def publish_and_read() -> list[bytes]:
            from aiokafka import AIOKafkaProducer

            deadline = time.monotonic() + 90
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka.bootstrap, **client_options(settings.kafka)
            )
            await producer.start()
            try:
                while time.monotonic() < deadline:
                    await producer.send_and_wait(settings.topic("raw"), encode(shell), key=b"w")
                    got = await _values(settings, settings.topic("events"), 1, timeout_s=5)
                    if got:
                        return got
                    assert worker.alive(), worker.tail(60)
            finally:
                await producer.stop()
            return []

        events = asyncio.run(publish_and_read())
        assert events and b"sasl-shell" in events[0], worker.tail(60)

        # `cadr incidents tail` reads the story the worker told of it, over the same listener
        tail = subprocess.run(
            [sys.executable, "-m", "cadr.cli", "incidents", "tail", "--from-beginning", "--limit", "1"],
            env=settings_env(settings),
            capture_output=True,
            timeout=120,
        )
        assert tail.returncode == 0, tail.stderr[-2000:]
        assert b" revision 1 " in tail.stdout and b"Alerts (1)" in tail.stdout, tail.stdout[-2000:]
    finally:
        worker.stop()


async def test_wrong_credentials_plaintext_and_an_untrusted_ca_are_refused(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    good = secure_kafka.settings("cadr-sensor", tmp_path, "x.")
    wrong_password = tmp_path / "wrong"
    wrong_password.write_text("not-the-password")
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    cases = {
        "wrong password": {"sasl_password_file": str(wrong_password)},
        "no TLS, no SASL": {"security_protocol": "PLAINTEXT"},
        "untrusted CA": {"ssl_cafile": str(other_ca)},
    }
    for what, change in cases.items():
        settings = secure_kafka.settings("cadr-sensor", tmp_path, "x.")
        for key, value in change.items():
            setattr(settings.kafka, key, value)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap,
            request_timeout_ms=5000,
            **client_options(settings.kafka),
        )
        with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
            try:
                await asyncio.wait_for(producer.start(), 20)
                await asyncio.wait_for(producer.send_and_wait(good.topic("raw"), b"{}"), 20)
            finally:
                await producer.stop()
            pytest.fail(f"{what}: the broker accepted the client")


def test_inconsistent_security_settings_are_clear_errors(tmp_path: Path) -> None:
    s = Settings()
    s.kafka.security_protocol = "SASL_SSL"
    with pytest.raises(KafkaAccessError, match="sasl_username"):
        client_options(s.kafka)
    s.kafka.sasl_username = "u"
    with pytest.raises(KafkaAccessError, match="password"):
        client_options(s.kafka)
    s.kafka.sasl_password_file = str(tmp_path / "missing")
    with pytest.raises(KafkaAccessError, match="sasl_password_file"):
        client_options(s.kafka)
    s.kafka.security_protocol = "TLS"
    with pytest.raises(KafkaAccessError, match="security_protocol"):
        client_options(s.kafka)
    assert client_options(Settings().kafka) == {"security_protocol": "PLAINTEXT"}
