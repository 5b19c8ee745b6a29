"""The sensors' partition-and-fold step (pure; sending is covered against Kafka in test_publisher.py and
audit/test_kafka.py)."""

from __future__ import annotations

from operator import itemgetter

import orjson

from sensors.batching import Partitioner, by_partition, fold
from streams.profiles import workload_partition

Rec = tuple[bytes, bytes, int]
KEY, VALUE, TS = itemgetter(0), itemgetter(1), itemgetter(2)


def _recs(*keys: str) -> list[Rec]:
    return [(k.encode(), orjson.dumps({"n": i, "k": k}), 1000 + i) for i, k in enumerate(keys)]


def test_both_sensors_partition_as_kafka_and_the_worker_do() -> None:
    partitioner = Partitioner()
    partitions = [0, 1, 2, 3, 4, 5]
    keys = [f"cluster/ns-{i}/Deployment/app-{i}" for i in range(200)]
    placed = [partitioner(k.encode(), partitions) for k in keys]
    # murmur2, the partition Kafka's Java client, Faust and the profile-edits topic compute
    assert placed == [workload_partition(k, len(partitions)) for k in keys]
    assert len(set(placed)) == len(partitions)
    assert [partitioner(k.encode(), partitions) for k in keys] == placed  # cached: the same answer


def test_by_partition_keeps_the_order_within_each_partition() -> None:
    recs = _recs(*(f"k{i % 7}" for i in range(100)))
    groups = by_partition(recs, KEY, [0, 1, 2], Partitioner())
    assert sorted(r for g in groups.values() for r in g) == sorted(recs)
    for part, group in groups.items():
        assert group == [r for r in recs if workload_partition(r[0].decode(), 3) == part]


def test_fold_by_key_makes_one_array_per_key_in_publish_order() -> None:
    recs = _recs("a", "b", "a", "c", "b", "a")
    out = fold(recs, key=KEY, value=VALUE, timestamp=TS, max_events=256, max_bytes=1 << 20, same_key=True)
    assert [(f.key, f.timestamp) for f in out] == [(b"a", 1000), (b"b", 1001), (b"c", 1003)]
    assert [m[0] for m in out[0].members] == [b"a", b"a", b"a"]
    assert orjson.loads(out[0].value) == [{"n": 0, "k": "a"}, {"n": 2, "k": "a"}, {"n": 5, "k": "a"}]
    assert out[2].value == recs[3][1]  # a run of one keeps its value as it is (no array)


def test_fold_of_any_key_takes_consecutive_records() -> None:
    recs = _recs("a", "b", "a", "c")
    out = fold(recs, key=KEY, value=VALUE, timestamp=TS, max_events=3, max_bytes=1 << 20, same_key=False)
    assert [len(f.members) for f in out] == [3, 1]
    assert out[0].key == b"a" and [m[0] for m in out[0].members] == [b"a", b"b", b"a"]


def test_fold_limits_events_and_bytes_per_record() -> None:
    recs = [(b"k", b"x" * 100, i) for i in range(10)]
    by_count = fold(recs, key=KEY, value=VALUE, timestamp=TS, max_events=4, max_bytes=1 << 20, same_key=True)
    assert [len(f.members) for f in by_count] == [4, 4, 2]
    by_bytes = fold(recs, key=KEY, value=VALUE, timestamp=TS, max_events=256, max_bytes=300, same_key=True)
    assert [len(f.members) for f in by_bytes] == [3, 3, 3, 1]  # 300 bytes of values at most
    one_each = fold(recs, key=KEY, value=VALUE, timestamp=TS, max_events=1, max_bytes=300, same_key=True)
    assert [f.value for f in one_each] == [r[1] for r in recs]
