"""Capture → replay: last week's events, captured from the store and replayed into a fresh
pipeline with a new rule, tell the same story live did — plus what the new rule finds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cadr.runtime import ensure_topics_sync, settings_env, spawn_cadr
from cadr.scenario import attack_events
from tests.pipeline_harness import Pipeline, consume_until, make_settings, publish, run_query

pytestmark = [pytest.mark.kafka]

NEW_RULE = """\
id: CADR-HUNT-0001
name: Download from a bare IP address
description: A download tool fetched a URL whose host is an IP address (no DNS name) - a hunt written after the fact.
severity: medium
mitre: [T1105]
tactic: command-and-control
source: ebpf
kinds: [process_exec]
condition: spawned_process and in_container and process.name in (download_tools) and process.cmdline glob "*://[0-9]*.[0-9]*.[0-9]*.[0-9]*/*"
output: "{process.name} fetched from a bare IP: {process.cmdline}"
story: fetched a payload from a bare IP address
dedup: [workload.key, process.cmdline]
"""
NEW_CASES = """\
fire:
  - name: curl to an IP
    event: {source: ebpf, kind: process_exec, workload: {namespace: a, pod: a-1, container_id: c1}, process: {exe: /usr/bin/curl, args: [curl, "http://203.0.113.7/k"]}}
no_fire:
  - name: curl to a name
    event: {source: ebpf, kind: process_exec, workload: {namespace: a, pod: a-1, container_id: c1}, process: {exe: /usr/bin/curl, args: [curl, "https://example.com/k"]}}
"""


def _cadr(settings: Any, *args: str, env: dict[str, str] | None = None) -> str:
    full = settings_env(settings)
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "cadr.cli", *args], env=full, capture_output=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc.stdout.decode() + proc.stderr.decode()


def _story(settings: Any, min_alerts: int) -> dict[str, Any]:
    incidents = asyncio.run(
        consume_until(
            settings, "incidents", lambda r: any(len(i["alerts"]) >= min_alerts for i in r), timeout=180
        )
    )
    time.sleep(3)  # let late revisions land, then take the latest of each incident
    incidents = asyncio.run(consume_until(settings, "incidents", lambda r: True, timeout=30))
    latest: dict[str, dict[str, Any]] = {}
    for inc in incidents:
        if inc["revision"] >= latest.get(inc["incident_id"], {}).get("revision", 0):
            latest[inc["incident_id"]] = inc
    assert len(latest) == 1, [i["title"] for i in latest.values()]
    return next(iter(latest.values()))


def test_new_rule_over_last_weeks_events_finds_the_incident(kafka_broker: Any, tmp_path: Path) -> None:
    week_ago = time.time_ns() - 6 * 86_400 * 10**9
    events = attack_events(start_ns=week_ago, cluster="test", tag="lastweek")

    live = make_settings(kafka_broker.bootstrap, f"live{uuid.uuid4().hex[:6]}.", tmp_path / "live")
    ensure_topics_sync(live)
    worker = Pipeline(live).start()
    try:
        asyncio.run(publish(live, events))
        live_story = _story(live, 6)
        ids = tuple(e.event_id for e in events)
        worker.wait_until(
            lambda: (
                run_query(live, f"SELECT count() AS n FROM cadr.events WHERE event_id IN {ids!r}")[0]["n"]
                == len(ids)
            ),
            120,
            "the events in the store",
        )
    finally:
        worker.stop()

    capture = tmp_path / "lastweek.jsonl.zst"
    _cadr(live, "capture", str(capture), "--since=-8d", "--until=now")

    rules = tmp_path / "hunts" / "CADR-HUNT-0001-download-from-ip"
    rules.mkdir(parents=True)
    (rules / "rule.yaml").write_text(NEW_RULE)
    (rules / "cases.yaml").write_text(NEW_CASES)
    fresh = make_settings(kafka_broker.bootstrap, f"fresh{uuid.uuid4().hex[:6]}.", tmp_path / "fresh")
    ensure_topics_sync(fresh)
    hunt_env = {"CADR_DETECT_RULES_DIRS": str(tmp_path / "hunts")}
    child = spawn_cadr("worker", ["worker"], fresh, extra_env=hunt_env)
    try:
        out = _cadr(fresh, "replay", str(capture), "--no-progress")
        assert str(len(events)) in out
        replay_story = _story(fresh, len(live_story["alerts"]) + 1)
    finally:
        child.stop()

    live_rules = sorted(a["rule_id"] for a in live_story["alerts"])
    replay_rules = sorted(a["rule_id"] for a in replay_story["alerts"])
    assert replay_rules == sorted([*live_rules, "CADR-HUNT-0001"])
    assert replay_story["first_seen"] == live_story["first_seen"]  # original times kept
    assert {t["event_id"] for t in live_story["timeline"]} <= {
        t["event_id"] for t in replay_story["timeline"]
    }
    # same_pod is the fallback label of a link that a more specific thread can also explain; which one a link
    # gets depends on the arrival order of alerts from different event partitions (audit vs process events),
    # which neither run fixes. The specific threads must all be there.
    assert set(live_story["threads"]) - {"same_pod"} <= set(replay_story["threads"])
    assert "fetched a payload from a bare IP address" in replay_story["summary"]
