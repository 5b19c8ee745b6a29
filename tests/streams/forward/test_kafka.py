"""The forwarder end to end on a real Kafka broker: consumer group per destination,
commit after acknowledgment, dead-letter topics, a second Kafka topic as destination,
lag metrics, and the ``cadr forward`` command.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from cadr.kafka_local import LocalKafka
from streams.forward.consumer import Forwarder
from tests.streams.forward.servers import BulkServer, HecServer, WebhookServer, make_incident
from tests.streams.forward.support import (
    assert_complete_and_ordered,
    committed,
    end_offsets,
    forward_config,
    hec_ids,
    produce,
    read_topic,
    running,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka


async def test_forwards_in_order_and_commits_after_ack(kafka_broker: LocalKafka, topics: str) -> None:
    settings = settings_for(kafka_broker, topics)
    updates = [make_incident(n, r) for r in range(1, 5) for n in range(50)]
    await produce(kafka_broker.bootstrap, settings.topic("incidents"), list(updates))
    async with HecServer() as hec:
        cfg = forward_config(
            topics,
            {"name": "splunk", "type": "splunk_hec", "url": hec.url, "token": "hec-token", "batch_size": 16},
        )
        fw = Forwarder(settings, cfg)
        async with running(fw):
            await wait_for(lambda: len(hec.events) >= len(updates), what="all updates at HEC")
            runner = fw.runners[0]
            await wait_for(lambda: fw.metrics.destinations["splunk"].commits > 0, what="a commit")
            assert runner.consumer is not None
            ends = await end_offsets(runner.consumer, settings.topic("incidents"))
            await wait_for(
                lambda: sum(runner._committed.values()) == sum(ends.values()), 30, "the last commit"
            )
            await runner.update_lag()
            assert fw.metrics.destinations["splunk"].lag == 0
    assert_complete_and_ordered(hec_ids(hec), {f"{u.incident_id}:{u.revision}" for u in updates})
    assert await committed(kafka_broker.bootstrap, topics + "fw.splunk") == ends
    text = fw.metrics.render_prometheus()
    assert 'cadr_forward_sent_total{destination="splunk",type="splunk_hec"} 200' in text


async def test_dead_letters_keep_the_reply_and_the_record(kafka_broker: LocalKafka, topics: str) -> None:
    settings = settings_for(kafka_broker, topics)
    good = [make_incident(n, 1) for n in range(10)]
    await produce(kafka_broker.bootstrap, settings.topic("incidents"), [*good, b"{not json"])

    def status(doc_id: str, source: dict[str, Any]) -> int:
        return 400 if source["incident_id"] == "inc-000003" else 201

    async with BulkServer(item_status=status) as es:
        cfg = forward_config(topics, {"name": "es", "type": "elasticsearch", "url": es.url, "index": "cadr"})
        fw = Forwarder(settings, cfg)
        async with running(fw):
            await wait_for(lambda: fw.metrics.destinations["es"].dead_lettered == 2, what="two dead letters")
            await wait_for(lambda: len(es.documents("cadr")) == 9, what="nine documents")
    letters = await read_topic(kafka_broker.bootstrap, f"{topics}forward.dlq.es", 2)
    values = sorted((orjson.loads(m.value) for m in letters), key=lambda v: v["reason"])
    refused, garbage = values
    assert refused["destination"] == "es" and refused["type"] == "elasticsearch"
    assert refused["reason"] == "rejected by destination"
    assert (
        refused["reply"]["status"] == 400 and refused["reply"]["error"]["type"] == "mapper_parsing_exception"
    )
    assert refused["record"]["incident_id"] == "inc-000003" and refused["dedup_id"] == "inc-000003:1"
    assert refused["source"]["topic"] == settings.topic("incidents")
    assert garbage["reason"].startswith("undecodable record") and garbage["record_text"] == "{not json"
    assert dict(letters[0].headers)["cadr-destination"] == b"es"


async def test_second_kafka_topic_as_destination(kafka_broker: LocalKafka, topics: str) -> None:
    settings = settings_for(kafka_broker, topics)
    updates = [make_incident(n, r) for r in range(1, 4) for n in range(20)]
    await produce(kafka_broker.bootstrap, settings.topic("incidents"), list(updates))
    target = topics + "siem.findings"
    cfg = forward_config(
        topics,
        {
            "name": "partner",
            "type": "kafka",
            "bootstrap": kafka_broker.bootstrap,
            "topic": target,
            "format": "ocsf",
            "headers": {"x-source": "cadr"},
        },
    )
    fw = Forwarder(settings, cfg)
    async with running(fw):
        await wait_for(lambda: fw.metrics.destinations["partner"].sent >= len(updates), what="all produced")
    records = await read_topic(kafka_broker.bootstrap, target, len(updates))
    ids = []
    for m in records:
        finding = orjson.loads(m.value)
        assert finding["class_uid"] == 2004
        assert m.key.decode() == finding["finding_info"]["uid"]
        headers = dict(m.headers)
        assert headers["x-source"] == b"cadr"
        ids.append(f"{headers['cadr-id'].decode()}:{headers['cadr-revision'].decode()}")
    # one partition per incident key: the order per incident holds across partitions
    assert_complete_and_ordered(ids, {f"{u.incident_id}:{u.revision}" for u in updates})


async def test_one_destination_down_holds_back_only_itself(kafka_broker: LocalKafka, topics: str) -> None:
    settings = settings_for(kafka_broker, topics)
    updates = [make_incident(n, r, severity="high" if n % 2 else "low") for r in (1, 2) for n in range(30)]
    hook = WebhookServer()  # not started: down
    async with HecServer() as hec:
        cfg = forward_config(
            topics,
            {
                "name": "up",
                "type": "splunk_hec",
                "url": hec.url,
                "token": "hec-token",
                "min_severity": "high",
            },
            {
                "name": "down",
                "type": "webhook",
                "url": hook.url + "/hook",
                "filter": {"namespaces": ["shop"]},
            },
        )
        fw = Forwarder(settings, cfg)
        async with running(fw):
            await produce(kafka_broker.bootstrap, settings.topic("incidents"), list(updates))
            await wait_for(lambda: len(hec.events) == 30, what="the high-severity half at HEC")
            down = fw.metrics.destinations["down"]
            await wait_for(lambda: down.failed > 0 and down.lag > 0, what="the down destination lagging")
            assert not down.up and down.sent == 0
            assert fw.metrics.destinations["up"].skipped == 30
            async with hook:
                await wait_for(lambda: len(hook.records) >= 60, what="the webhook catching up")
                await wait_for(lambda: down.lag == 0, what="lag back to zero")
    ids = [f"{r['incident_id']}:{r['revision']}" for r in hook.records]
    assert_complete_and_ordered(ids, {f"{u.incident_id}:{u.revision}" for u in updates})


def _write_config(path: Path, broker: LocalKafka, prefix: str, body: str) -> Path:
    path.write_text(
        f'[kafka]\nbootstrap = "{broker.bootstrap}"\ntopic_prefix = "{prefix}"\n\n'
        f'[forward]\ngroup_prefix = "{prefix}fw."\nsession_timeout_s = 3\nlog_interval_s = 0\n\n' + body
    )
    return path


def _cadr(*args: str) -> list[str]:
    return [sys.executable, "-m", "cadr.cli", *args]


async def test_cli_test_incident(kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path) -> None:
    async with HecServer() as hec:
        conf = _write_config(
            tmp_path / "cadr.toml",
            kafka_broker,
            topic_prefix,
            f'[[forward.destinations]]\nname = "splunk"\ntype = "splunk_hec"\n'
            f'url = "{hec.url}"\ntoken = "hec-token"\n',
        )
        proc = await asyncio.create_subprocess_exec(
            *_cadr("--config", str(conf), "forward", "--test", "splunk"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CADR_CONFIG": ""},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "delivered test incident cadr-test-" in out.decode()
    (ev,) = hec.events
    assert ev["event"]["title"].startswith("TEST:")
