"""Events of a container whose pod is not known yet wait for it (sensors.ebpf.hold), on the sensor's own
decoder output (tests/shapes.py): rewritten with the pod's workload once it is known, counted when not."""

from __future__ import annotations

from schemas.codec import decode_event
from sensors.ebpf.batch import JsonItem
from sensors.ebpf.hold import AttributionHold
from tests.shapes import Node, Pod


def _late_pod(node: Node) -> tuple[Pod, AttributionHold, list[JsonItem]]:
    """A pod whose first processes run before the pod watch knows it."""
    pod = node.pod(
        "shop", "web-1", owner=("StatefulSet", "web"), service_account="web", ip="10.244.1.4", watched=False
    )
    hold = AttributionHold(node.attribution, hold_s=5.0, clock=lambda: node.mono)
    entry = node.process(pod)
    node.exec(entry, "/bin/sh", ["sh", "-c", "id"], at=1.0)
    child, _ = node.exec(entry, "/usr/bin/id", ["id"], at=1.1)
    node.open(child, "/etc/passwd", at=1.2)
    return pod, hold, list(node.decoded)


def test_held_events_leave_with_the_pod_once_it_is_known_in_order() -> None:
    node = Node()
    pod, hold, items = _late_pod(node)
    assert all(b"/container/" in key for _, key, _, _ in items)  # the sensor did not know the pod
    assert hold.process(items) == []
    assert hold.held == 3
    node.mono = 1.0
    assert hold.process([]) == []  # still unknown: still waiting
    node.watch(pod)
    node.mono = 2.0
    out = hold.process([])
    events = [decode_event(v) for v, _, _, _ in out]
    assert [e.kind for e in events] == ["process_exec", "process_exec", "file_open"]
    assert {e.workload.pod for e in events} == {"web-1"}
    assert {e.workload.workload_name for e in events} == {"web"}
    assert {e.workload.pod_ip for e in events} == {"10.244.1.4"}
    assert {e.workload.container_id for e in events} == {pod.container_ids["app"]}
    assert {k for _, k, _, _ in out} == {b"prod/shop/StatefulSet/web"}
    assert hold.counters["attributed_late"] == 3 and hold.counters["unattributed"] == 0
    # a record formatted with the old answer before the sensor saw the change is rewritten too
    (again,) = hold.process([items[-1]])
    assert decode_event(again[0]).workload.pod == "web-1" and again[1] == b"prod/shop/StatefulSet/web"


def test_a_pod_that_never_comes_lets_the_events_go_counted() -> None:
    node = Node()
    _, hold, items = _late_pod(node)
    hold.process(items)
    node.mono = 4.9
    assert hold.process([]) == []
    node.mono = 5.1
    out = hold.process([])
    assert out == items  # as they were, in order
    assert hold.counters["unattributed"] == 3 and hold.held == 0
    assert hold.process([items[0]]) == [items[0]]  # given up on: not held again


def test_the_hold_is_bounded() -> None:
    node = Node()
    _, hold, items = _late_pod(node)
    hold.max_events = 2
    out = hold.process(items)
    assert out == items and hold.held == 0  # over the bound: the container's events leave
    assert hold.counters["overflow"] == 3 and hold.counters["unattributed"] == 3
