"""PodCache: owner chains, container ids, pod IPs, updates and deletes (pure, no API server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sensors.containers import WorkloadResolver
from sensors.k8s.cache import PodCache, strip_runtime

DATA = Path(__file__).parent / "data"


def _items(name: str) -> list[dict[str, Any]]:
    return json.loads((DATA / name).read_text())["items"]


def _cache() -> PodCache:
    cache = PodCache(cluster="prod-eu")
    cache.replace("ReplicaSet", _items("replicasets-list.json"))
    cache.replace("Job", _items("jobs-list.json"))
    cache.replace("Pod", _items("pods-list-1.json"))
    return cache


def test_it_is_a_workload_resolver() -> None:
    assert isinstance(_cache(), WorkloadResolver)


def test_deployment_pod_resolves_through_its_replicaset() -> None:
    w = _cache().resolve("containerd://" + "1a" * 32)
    assert w is not None
    assert (w.cluster, w.namespace, w.pod, w.container) == ("prod-eu", "shop", "web-7d9f8b6c5d-x2x7q", "app")
    assert (w.workload_kind, w.workload_name) == ("Deployment", "web")
    assert w.image == "nginx:1.25" and w.service_account == "web" and w.pod_ip == "10.244.1.5"
    assert w.container_id == "1a" * 32 and w.labels["app"] == "web"
    assert w.key() == "prod-eu/shop/Deployment/web"


def test_cronjob_pod_resolves_through_its_job() -> None:
    w = _cache().resolve("2b" * 32)
    assert w is not None and (w.workload_kind, w.workload_name) == ("CronJob", "nightly-backup")
    info = _cache().pod_info("ops", "nightly-backup-29401200-k8z5n")
    assert info is not None
    assert info.owner_chain == (("Job", "nightly-backup-29401200"), ("CronJob", "nightly-backup"))
    assert info.node == "worker-1"


def test_each_container_of_a_pod_is_known_by_its_id() -> None:
    cache = _cache()
    pg, exporter = cache.resolve("3c" * 32), cache.resolve("3d" * 32)
    assert pg is not None and exporter is not None
    assert (pg.container, pg.image) == ("postgres", "postgres:16")
    assert (
        exporter.container == "exporter"
        and exporter.workload_name == "db"
        and exporter.workload_kind == "StatefulSet"
    )


def test_by_pod_with_a_container_names_its_id() -> None:
    w = _cache().by_pod("shop", "db-0", "exporter")
    assert w is not None and w.container_id == "3d" * 32 and w.image.startswith("prometheuscommunity/")


def test_a_bare_pod_is_its_own_workload() -> None:
    w = _cache().by_pod("default", "debug")
    assert w is not None and (w.workload_kind, w.workload_name) == ("Pod", "debug")


def test_an_unseen_replicaset_of_a_deployment_is_named_by_its_hash_label() -> None:
    w = _cache().resolve("6f" * 32)
    assert w is not None and (w.workload_kind, w.workload_name) == ("Deployment", "cart")


def test_by_ip_skips_host_network_pods() -> None:
    cache = _cache()
    w = cache.by_ip("10.244.1.7")
    assert w is not None and w.pod == "db-0" and w.container == ""
    assert cache.by_ip("192.168.49.2") is None  # kube-proxy shares the node's address
    proxy = cache.resolve("4d" * 32)
    assert proxy is not None and proxy.pod_ip == "" and proxy.workload_kind == "DaemonSet"


def test_updates_and_deletes_move_the_indexes() -> None:
    cache = _cache()
    debug = next(p for p in _items("pods-list-1.json") if p["metadata"]["name"] == "debug")
    cache.delete("Pod", debug)
    assert cache.resolve("5e" * 32) is None and cache.by_ip("10.244.1.9") is None
    assert cache.by_pod("default", "debug") is None
    # the container restarted: a new id replaces the old one
    web = next(p for p in _items("pods-list-1.json") if p["metadata"]["name"].startswith("web-"))
    web["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "9f" * 32
    cache.upsert("Pod", web)
    assert cache.resolve("1a" * 32) is None
    w = cache.resolve("9f" * 32)
    assert w is not None and w.workload_name == "web"


def test_an_owner_arriving_after_its_pods_fixes_their_workload() -> None:
    cache = PodCache()
    cache.replace("Pod", _items("pods-list-1.json"))
    before = cache.resolve("2b" * 32)
    assert before is not None and (before.workload_kind, before.workload_name) == (
        "Job",
        "nightly-backup-29401200",
    )
    cache.upsert("Job", _items("jobs-list.json")[0])
    after = cache.resolve("2b" * 32)
    assert after is not None and (after.workload_kind, after.workload_name) == ("CronJob", "nightly-backup")


def test_strip_runtime() -> None:
    assert strip_runtime("cri-o://abc") == "abc" and strip_runtime("abc") == "abc"


def test_actor_of_names_the_pod_behind_a_source_ip_or_the_one_workload_of_a_service_account() -> None:
    cache = _cache()
    web = cache.actor_of("system:serviceaccount:shop:web", ["10.244.1.5"])
    assert web is not None and (web.pod, web.workload_name) == ("web-7d9f8b6c5d-x2x7q", "web")
    # any user calling from a pod's IP: that pod acted
    assert (cache.actor_of("alice", ["10.244.1.9"]) or web).pod == "debug"
    # not from a pod: the service account's pods are all of one workload (no pod named)
    sa = cache.actor_of("system:serviceaccount:shop:web", ["198.51.100.7"])
    assert sa is not None and (sa.pod, sa.workload_kind, sa.workload_name) == ("", "Deployment", "web")
    # shop:default runs db-0 and the cart pods: which one acted cannot be told
    assert cache.actor_of("system:serviceaccount:shop:default", ["198.51.100.7"]) is None
    assert cache.actor_of("alice", ["198.51.100.7"]) is None
    assert (
        cache.actor_of("system:serviceaccount:kube-system:kube-proxy", ["192.168.49.2"]) is not None
    )  # by SA
    web_pod = next(p for p in _items("pods-list-1.json") if p["metadata"]["name"].startswith("web-"))
    version = cache.version
    cache.delete("Pod", web_pod)
    assert cache.version > version
    assert cache.actor_of("system:serviceaccount:shop:web", ["10.244.1.5"]) is None
