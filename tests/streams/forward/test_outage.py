"""Losing nothing: destinations down for a minute, and a forwarder killed mid-batch.

- Three destinations of different wire protocols (Splunk HEC, Elasticsearch bulk and a
  real rsyslogd over TCP) go down together for 60 s while 10,000 incident updates flow
  into ``cadr.incidents``. Afterwards every update has arrived at each, in order per
  incident, and the lag metric showed the backlog while they were down.
- ``cadr forward`` runs as a child process and is SIGKILLed while a webhook holds a
  batch it has already stored without answering. After a restart every update arrives;
  the webhook sees the in-flight batch twice, each copy carrying incident_id + revision
  so it can drop the duplicates, and the bulk destination dedups by itself (409 on
  ``create`` of an existing ``_id``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cadr.kafka_local import LocalKafka
from cadr.topics import ensure_topics
from schemas.topics import topic_specs
from streams.forward.consumer import Forwarder
from tests.streams.forward.servers import (
    BulkServer,
    HecServer,
    Rsyslogd,
    WebhookServer,
    free_port,
    make_incident,
)
from tests.streams.forward.support import (
    assert_complete_and_ordered,
    forward_config,
    hec_ids,
    produce,
    running,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

INCIDENTS = 1000
REVISIONS = 10  # 10,000 updates
OUTAGE_S = 60.0


def _syslog_ids(rs: Rsyslogd) -> list[str]:
    out = []
    for line in rs.lines():
        sd = dict(p.split("=", 1) for p in line[5].strip("[]").split(" ")[1:])
        out.append(f"{sd['incident_id'].strip(chr(34))}:{sd['revision'].strip(chr(34))}")
    return out


# Seen once in ~10 runs: rsyslogd reset every connection from the first record on (before the
# outage even began); not reproduced in isolation. One retry keeps CI honest about real losses,
# which fail both runs.
@pytest.mark.flaky(reruns=1)
@pytest.mark.timeout(240)
async def test_destinations_down_for_a_minute_lose_nothing(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 4))
    settings = settings_for(kafka_broker, topic_prefix)
    updates = [make_incident(n, r, timeline=2) for r in range(1, REVISIONS + 1) for n in range(INCIDENTS)]
    expected = {f"{u.incident_id}:{u.revision}" for u in updates}
    first_wave = updates[:INCIDENTS]  # revision 1 of every incident, before the outage

    hec, es = HecServer(), BulkServer()
    rs = Rsyslogd(tmp_path / "rsyslog")
    await hec.start()
    await es.start()
    rs.start()
    retry = {"initial_backoff_s": 0.2, "max_backoff_s": 2.0}
    cfg = forward_config(
        topic_prefix,
        {"name": "splunk", "type": "splunk_hec", "url": hec.url, "token": "hec-token", "retry": retry},
        {"name": "es", "type": "elasticsearch", "url": es.url, "index": "cadr", "retry": retry},
        {
            "name": "syslog",
            "type": "syslog",
            "host": "127.0.0.1",
            "port": rs.port,
            "retry": retry,
            "timeout_s": 10,
        },
    )
    fw = Forwarder(settings, cfg)
    metrics = fw.metrics.destinations
    try:
        async with running(fw):
            await produce(kafka_broker.bootstrap, settings.topic("incidents"), list(first_wave))
            await wait_for(lambda: len(hec.events) >= INCIDENTS, 60, "first wave at HEC")
            await wait_for(lambda: len(es.arrivals) >= INCIDENTS, 60, "first wave at bulk")
            await rs.wait_lines(INCIDENTS, 60)

            # --- all three destinations go down ---------------------------------------------
            down_at = time.monotonic()
            await hec.stop()
            await es.stop()
            rs.stop(signal.SIGKILL)
            sent_before = {name: m.sent for name, m in metrics.items()}
            max_lag = dict.fromkeys(metrics, 0)
            rest = updates[INCIDENTS:]
            waves = REVISIONS - 1
            for w in range(waves):  # the updates keep flowing, a revision every few seconds
                await produce(
                    kafka_broker.bootstrap,
                    settings.topic("incidents"),
                    list(rest[w * INCIDENTS : (w + 1) * INCIDENTS]),
                )
                await asyncio.sleep((OUTAGE_S - 10) / waves)
                for name, m in metrics.items():
                    max_lag[name] = max(max_lag[name], m.lag)
            while time.monotonic() - down_at < OUTAGE_S:
                await asyncio.sleep(0.5)
                for name, m in metrics.items():
                    max_lag[name] = max(max_lag[name], m.lag)
            for name, m in metrics.items():
                assert m.sent == sent_before[name], f"{name} claims deliveries while down"
                assert not m.up and m.failed > 0 and m.retried > 0
                # nothing past the last commit before the outage is committed while it lasts
                assert max_lag[name] >= len(rest), (name, max_lag[name])

            # --- they come back on the same addresses ----------------------------------------
            await hec.start()
            await es.start()
            rs.start()
            await wait_for(lambda: len(set(hec_ids(hec))) >= len(expected), 120, "HEC catching up")
            await wait_for(lambda: len(es.documents("cadr")) >= len(expected), 120, "bulk catching up")
            await rs.wait_lines(len(expected), 120)
            await wait_for(lambda: all(m.lag == 0 for m in metrics.values()), 30, "lag back to zero")
    finally:
        await hec.stop()
        await es.stop()
        rs.stop()
    assert_complete_and_ordered(hec_ids(hec), expected)
    assert_complete_and_ordered([doc_id for _, doc_id in es.arrivals], expected)
    assert_complete_and_ordered(_syslog_ids(rs), expected)
    for m in metrics.values():
        assert m.dead_lettered == 0 and m.up


def _cadr_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CADR_")}


async def _scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.timeout(240)
async def test_forwarder_killed_mid_batch_loses_nothing(
    kafka_broker: LocalKafka, topic_prefix: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_broker.bootstrap, topic_specs(topic_prefix, 4))
    settings = settings_for(kafka_broker, topic_prefix)
    updates = [make_incident(n, r, timeline=2) for r in range(1, 11) for n in range(200)]
    expected = {f"{u.incident_id}:{u.revision}" for u in updates}
    await produce(kafka_broker.bootstrap, settings.topic("incidents"), list(updates))

    hook = WebhookServer()
    hook.stall_request = 5  # store the 5th request, then never answer it
    es = BulkServer()
    await hook.start()
    await es.start()
    metrics_port = free_port()
    conf = tmp_path / "cadr.toml"
    conf.write_text(
        f"""
[kafka]
bootstrap = "{kafka_broker.bootstrap}"
topic_prefix = "{topic_prefix}"

[forward]
group_prefix = "{topic_prefix}fw."
session_timeout_s = 3
log_interval_s = 0
metrics_port = {metrics_port}

[[forward.destinations]]
name = "hook"
type = "webhook"
url = "{hook.url}/hook"
batch_size = 50
timeout_s = 120
retry = {{ initial_backoff_s = 0.1, max_backoff_s = 1.0 }}

[[forward.destinations]]
name = "es"
type = "elasticsearch"
url = "{es.url}"
index = "cadr"
batch_size = 50
retry = {{ initial_backoff_s = 0.1, max_backoff_s = 1.0 }}
"""
    )
    log = (tmp_path / "forward.log").open("ab")
    cmd = [sys.executable, "-m", "cadr.cli", "--config", str(conf), "forward"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_cadr_env())

    proc = start()
    try:
        await asyncio.wait_for(hook.stalled.wait(), 60)
        stored_before_kill = len(hook.records)
        proc.send_signal(signal.SIGKILL)  # mid-batch: a batch is stored at the webhook, not answered
        proc.wait(timeout=30)
        hook.release()
        hook.stall_request = None
        proc = start()
        await wait_for(
            lambda: set(f"{r['incident_id']}:{r['revision']}" for r in hook.records) >= expected, 120
        )
        await wait_for(lambda: len(es.documents("cadr")) >= len(expected), 120, "bulk complete")

        async def lag_zero() -> dict[str, float]:
            deadline = time.monotonic() + 30
            while True:
                m = await _scrape(metrics_port)
                lags = [v for k, v in m.items() if k.startswith("cadr_forward_lag_records")]
                if lags and sum(lags) == 0:
                    return m
                if time.monotonic() > deadline:
                    raise AssertionError(f"lag did not reach 0: {lags}")
                await asyncio.sleep(0.5)

        scraped = await lag_zero()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        await hook.stop()
        await es.stop()
    ids = [f"{r['incident_id']}:{r['revision']}" for r in hook.records]
    assert_complete_and_ordered(ids, expected)
    # The batch in flight at the kill arrived twice: once before, once after the restart.
    assert stored_before_kill > 0 and len(ids) > len(expected)
    assert all("incident_id" in r and "revision" in r for r in hook.records)
    # Bulk dedups by _id: nothing stored twice, whatever it was sent twice.
    assert len(es.documents("cadr")) == len(expected)
    assert_complete_and_ordered([doc_id for _, doc_id in es.arrivals], expected)
    assert scraped['cadr_forward_dead_lettered_total{destination="hook",type="webhook"}'] == 0
