"""A worker killed mid-story continues the same story after a restart (state restored from
the table changelogs): no duplicate incident, no lost alert."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from cadr.runtime import ensure_topics_sync
from cadr.scenario import attack_events
from tests.pipeline_harness import Pipeline, consume_until, make_settings, publish

pytestmark = [pytest.mark.kafka]


# Failed once under a load average of 5 (the restarted worker's recovery outlasted the wait);
# passes on every quiet run. One retry; a real split of the story fails both.
@pytest.mark.flaky(reruns=1)
def test_story_continues_across_a_sigkill(
    kafka_broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(kafka_broker.bootstrap, f"rs{uuid.uuid4().hex[:6]}.", tmp_path)
    monkeypatch.setenv("CADR_WORKER_AGENTS", "enrich,detect,correlate")
    ensure_topics_sync(settings)
    events = attack_events(cluster="test", tag="restart")
    first, second = events[:3], events[3:]  # exec session + shell + curl; then drift, token, secrets
    worker = Pipeline(settings).start()
    try:
        asyncio.run(publish(settings, first))
        before = asyncio.run(
            consume_until(settings, "incidents", lambda r: any(len(i["alerts"]) >= 3 for i in r), 120)
        )
        incident_id = before[-1]["incident_id"]
        worker.kill()
        worker = Pipeline(settings).start()
        asyncio.run(publish(settings, second))

        def complete(recs: list[dict[str, Any]]) -> bool:
            return any(
                r["incident_id"] == incident_id
                and {"CADR-PROC-0003", "CADR-FILE-0001"} <= {a["rule_id"] for a in r["alerts"]}
                for r in recs
            )

        after = asyncio.run(consume_until(settings, "incidents", complete, 300))
    finally:
        worker.stop()
    ids = {r["incident_id"] for r in after}
    assert ids == {incident_id}, f"the story split into {ids}"
    last = max(after, key=lambda r: r["revision"])
    revisions = [r["revision"] for r in after if r["incident_id"] == incident_id]
    # revisions only grow, in the topic's order (a redelivered alert may re-send the same revision,
    # never an older one; one revision may fold several alerts of a batch)
    assert revisions == sorted(revisions) and max(revisions) == last["revision"]
    rules = {a["rule_id"] for a in last["alerts"]}
    assert {"CADR-K8S-0001", "CADR-PROC-0001", "CADR-PROC-0006", "CADR-PROC-0003", "CADR-FILE-0001"} <= rules
    assert len(last["alerts"]) == len({a["alert_id"] for a in last["alerts"]})
    assert "exec_session" in last["threads"]
