"""Issue 13, finding 8: control characters from the wire never reach a terminal or a SIEM raw.

A user name carrying an OSC title change, BEL, a screen clear, NUL and a one-byte C1 CSI, and an argv with ESC,
go through the commands a person runs (`cadr scan`, `cadr scan --stories`, `cadr incidents tail`, `cadr query
--format table`, `cadr profiles show`) and through the CEF and syslog forwarders. Before the change each of
these printed them raw (CEF passed ESC and NUL through; the syslog JSON payload passed C1).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from cadr.kafka_local import LocalKafka
from schemas.codec import encode
from schemas.records import Actor, Profile
from schemas.settings import Settings
from streams.forward.cef import cef_line
from streams.forward.parse import parse_destination
from streams.forward.payload import make_item
from streams.forward.syslog import Syslog
from tests.sensors.audit.support import FALCO
from tests.streams.forward.servers import make_incident

EVIL_USER = "mallory\x1b]0;owned\x07\x1b[2J\x00\x9b31m\u202e"
EVIL_ARG = "x\x1b[8mhidden\x1b[0m"
FALCO_EXEC = FALCO / "exec_pod.json"
# anything a terminal or a log parser would act on; a renderer's own newlines are allowed
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _assert_clean(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, (
        f"raw control character {found.group()!r} in {text[max(0, found.start() - 40) : found.end() + 40]!r}"
    )


def _cadr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cadr.cli", *args], capture_output=True, timeout=timeout)


@pytest.fixture
def evil_exec(tmp_path: Path) -> Path:
    """The Falco corpus's `kubectl exec`, by an evil user name, running an evil command."""
    event = orjson.loads(FALCO_EXEC.read_bytes())
    event["user"]["username"] = EVIL_USER
    event["requestURI"] = event["requestURI"].replace("command=bash", f"command={quote(EVIL_ARG)}")
    path = tmp_path / "exec.json"
    path.write_bytes(orjson.dumps(event))
    return path


def test_cadr_scan_stories_and_alerts_escape_control_characters(evil_exec: Path) -> None:
    stories = _cadr("scan", "--stories", str(evil_exec))
    assert stories.returncode == 0, stories.stderr
    out = stories.stdout.decode()
    assert "mallory\\x1b]0;owned\\x07\\x1b[2J\\x00\\x9b31m\\u202e" in out  # visible, not dropped
    _assert_clean(out)
    alerts = _cadr("scan", str(evil_exec))
    assert alerts.returncode == 0, alerts.stderr
    assert "mallory\\x1b" in alerts.stdout.decode()
    _assert_clean(alerts.stdout.decode())


def test_cadr_incidents_tail_escapes_control_characters(kafka_broker: LocalKafka, topic_prefix: str) -> None:
    from aiokafka import AIOKafkaProducer

    incident = make_incident(1)
    incident.title = f"Shell by {EVIL_USER}"
    incident.actors = [Actor(kind="user", name=EVIL_USER)]
    incident.timeline[0].text = f"{EVIL_USER} ran {EVIL_ARG}"

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(f"{topic_prefix}incidents", encode(incident), key=b"inc-000001")
        finally:
            await producer.stop()

    asyncio.run(publish())
    tail = _cadr(
        "--kafka",
        kafka_broker.bootstrap,
        "--topic-prefix",
        topic_prefix,
        "incidents",
        "tail",
        "--from-beginning",
        "--limit",
        "1",
    )
    assert tail.returncode == 0, tail.stderr
    out = tail.stdout.decode()
    assert "Shell by mallory\\x1b]0;owned" in out and "x\\x1b[8mhidden" in out
    _assert_clean(out)


def test_cadr_query_table_escapes_control_characters(tmp_path: Path) -> None:
    from streams.store.sink import StoreWriter
    from tests.streams.store.support import event

    settings = Settings()
    settings.data_dir = str(tmp_path)
    ev = event("evil-1")
    assert ev.process is not None
    ev.process.args = ["sh", EVIL_ARG]
    with StoreWriter(settings.store_dsn) as writer:
        writer.write_events([encode(ev)])
    table = _cadr(
        "--data-dir", str(tmp_path), "query", "SELECT event_id, args FROM events", "--format", "table"
    )
    assert table.returncode == 0, table.stderr
    assert "x\\x1b[8mhidden" in table.stdout.decode()
    _assert_clean(table.stdout.decode())


def test_cadr_profiles_show_escapes_control_characters() -> None:
    from cadr.commands.profiles import render_profile

    profile = Profile(workload_key="c/ns/Deployment/web", container="web", execs={"/bin/sh": [EVIL_ARG]})
    profile.files = [f"/tmp/{EVIL_USER}"]
    _assert_clean(render_profile(profile))


def test_cef_escapes_esc_nul_and_every_c0_c1_character() -> None:
    incident = make_incident(1)
    incident.title = f"Shell by {EVIL_USER}"
    incident.summary = f"{EVIL_USER} ran {EVIL_ARG}\x00\x7f"
    incident.actors = [Actor(kind="user", name=EVIL_USER)]
    line = cef_line(incident, host="node-1", extra_fields={"note": "\x1b[31m"})
    _assert_clean(line)
    assert "mallory\\\\x1b]0;owned\\\\x07" in line  # visible, its backslash escaped as CEF wants


@pytest.mark.parametrize("payload", ["cef", "json"])
def test_syslog_messages_carry_no_raw_control_characters(payload: str) -> None:
    table: dict[str, object] = {
        "name": "s",
        "type": "syslog",
        "host": "127.0.0.1",
        "port": 514,
        "payload": payload,
    }
    dest = Syslog(parse_destination(table, "d"), node="node-1")
    incident = make_incident(1)
    incident.title = f"Shell by {EVIL_USER}"
    incident.actors = [Actor(kind="user", name=EVIL_USER)]
    incident.timeline[0].text = f"ran {EVIL_ARG}"
    frame = dest.encode(make_item(incident, dest.cfg))
    _assert_clean(frame.decode("utf-8"))
    if payload == "json":  # the JSON payload still reads back to the original text
        body = frame[frame.index(b"] ") + 2 :]
        assert orjson.loads(body)["title"] == f"Shell by {EVIL_USER}"
