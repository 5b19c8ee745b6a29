"""Correlation state stays bounded however busy a story is (issue 13 item 4): pure, no Kafka.

100,000 alerts in one pod make one story; its record lists at most ``max_alerts`` alerts (older ones
folded into the counts of the first alert of their rule) and ``max_timeline`` steps, the story keeps at
most ``max_links`` link keys, and the record stays far below Kafka's message size. Stories close after
inactivity and, a link window later, their state and links are gone, each eviction counted.
"""

from __future__ import annotations

import msgspec

from schemas.codec import decode_events, encode
from schemas.records import Alert, Event, Severity
from schemas.settings import CorrelateSettings
from streams.correlate import Correlator
from tests.shapes import T0, Node, S, Stages

N = 100_000
RULES = [f"CADR-TEST-{i:04d}" for i in range(25)]


def _template() -> Event:
    """One process exec in a pod, as the sensor publishes it and enrich passes it on."""
    node = Node()
    pod = node.pod("shop", "api-1", owner=("StatefulSet", "api"), service_account="api", ip="10.244.1.9")
    app = node.process(pod)
    stages = Stages()
    stages.enricher.process([node.exec(app, "/usr/bin/python3", ["python3", "/app/main.py"], at=1)[1]])
    result = stages.enricher.process([node.exec(app, "/tmp/x", ["x"], at=2)[1]])
    (event,) = decode_events(result.events[0][1])
    return event


def _alerts(n: int, start_s: float = 10.0) -> list[Alert]:
    """n alerts of the same pod (new processes of one parent), a few rules, one per 10 ms."""
    base = _template()
    assert base.process is not None
    out = []
    for i in range(n):
        t = T0 + int((start_s + i / 100) * S)
        proc = msgspec.structs.replace(
            base.process,
            pid=100_000 + i,
            exec_id=f"x-{i}",
            exe=f"/tmp/dropped-{i}",
            args=[f"/tmp/dropped-{i}", "-c" * 20],
        )
        event = msgspec.structs.replace(base, event_id=f"e-{i}", time=t, process=proc)
        rule = RULES[i % len(RULES)]
        out.append(
            Alert(
                alert_id=f"a-{i}",
                rule_id=rule,
                rule_name=f"Rule {rule} with a name of some length",
                severity=Severity.HIGH,
                mitre=["T1059"],
                message=f"/tmp/dropped-{i} ran in shop/api-1 container app " + "x" * 120,
                story=f"ran /tmp/dropped-{i}",
                time=t,
                first_seen=t,
                last_seen=t,
                workload=event.workload,
                event=event,
            )
        )
    return out


def test_a_hundred_thousand_alerts_make_one_bounded_story() -> None:
    settings = CorrelateSettings()
    c = Correlator(settings=settings)
    alerts = _alerts(N)
    revisions = 0
    for start in range(0, N, 500):  # as the agent does: a batch, then one flush
        for alert in alerts[start : start + 500]:
            c.add(alert, alert.time)
        revisions += len(c.flush(alerts[min(start + 499, N - 1)].time))
    assert revisions == N // 500  # one revision per batch, not one per alert
    (state,) = c.stories.values()
    inc = state.incident
    assert inc.alert_count == N
    assert len(inc.alerts) <= settings.max_alerts
    assert sum(r.count + r.folded for r in inc.alerts) == N  # nothing lost: folded into counts
    assert inc.folded_alerts == N - len(inc.alerts) == c.counters["alerts_folded"]
    assert len(inc.timeline) <= settings.max_timeline and inc.folded_timeline > 0
    assert inc.timeline[0].event_id == "e-0" and inc.timeline[-1].event_id == f"e-{N - 1}"  # first and latest
    assert len(state.link_keys) <= settings.max_links
    assert len(c.links) <= settings.max_links
    assert c.counters["links_evicted"] > 0
    assert len(state.phrases) <= settings.max_alerts and len(state.parents) <= settings.max_timeline
    record = len(encode(inc))
    assert record < 256 * 1024, record  # the topic's message limit is 1 MiB
    assert len(encode(state)) < 512 * 1024
    assert f"{N} alerts" in inc.summary


def test_stories_close_and_their_state_is_forgotten() -> None:
    settings = CorrelateSettings(inactivity_close_s=60, link_window_s=120)
    c = Correlator(settings=settings)
    alerts = _alerts(50)
    for alert in alerts:
        c.add(alert, alert.time)
    c.flush(alerts[-1].time)
    now = alerts[-1].time
    assert c.close_idle(now + 30 * S) == []
    (closed,) = c.close_idle(now + 61 * S)
    assert closed.status.value == "closed" and c.counters["stories_closed"] == 1
    assert len(c.stories) == 1 and len(c.links) > 0  # kept a link window: a late alert still joins
    c.close_idle(now + 200 * S)
    assert len(c.stories) == 0 and len(c.links) == 0
    assert c.counters["stories_deleted"] == 1 and c.counters["links_expired"] > 0


def test_links_expire_a_link_window_after_their_latest_use() -> None:
    settings = CorrelateSettings(inactivity_close_s=10_000, link_window_s=100)
    c = Correlator(settings=settings)
    early, late = _alerts(10, start_s=10), _alerts(10, start_s=500)
    for alert in early:
        c.add(alert, alert.time)
    c.flush(early[-1].time)
    (first,) = c.stories
    keys_before = set(c.links)
    # another story, later, in another pod, moves the watermark on: the first story's links are past
    # the link window
    for alert in late:
        assert alert.event is not None and alert.event.process is not None
        alert.alert_id += "-late"
        proc = msgspec.structs.replace(alert.event.process, exec_id=alert.event.process.exec_id + "-late")
        wl = msgspec.structs.replace(alert.workload, pod="api-2")
        alert.event = msgspec.structs.replace(alert.event, process=proc, workload=wl)
        alert.workload = wl
        c.add(alert, alert.time)
    c.flush(late[-1].time)
    c.close_idle(late[-1].time)
    assert len(c.stories) == 2 and all(s.incident.status.value == "open" for s in c.stories.values())
    assert all(
        link.incident_id != first for link in c.links.values()
    )  # (a key the later story took over stays)
    assert c.counters["links_expired"] >= len(keys_before - set(c.links))
    assert c.stories[first].link_keys == []
