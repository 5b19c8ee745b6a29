"""Issue 13, finding 9: what docker-compose.yml, deploy/kubernetes and the Dockerfile promise, read from the files.

Compose and Kubernetes cannot run here; the broker they run is exercised for real in test_kafka_deployment.py
(its entrypoint, broker.properties and ACLs). These tests hold the files to the rest: every cadr component reaches
Kafka over SASL_SSL as its own user and ClickHouse over https with a password from a secret; only the worker can
reach the store; nothing but cadr's components can reach Kafka; the image carries no compiler. Before the change
Kafka was plaintext and unauthenticated, ClickHouse plain http without credentials, there was no NetworkPolicy and
the image shipped clang, bpftool and make.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CADR_COMPONENTS = {"worker": "cadr-worker", "audit": "cadr-audit", "sensor": "cadr-sensor"}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _all_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def test_compose_kafka_and_clickhouse_clients_are_authenticated_and_encrypted() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, user in CADR_COMPONENTS.items():
        env = services[name]["environment"]
        assert env["CADR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["CADR_KAFKA_SASL_USERNAME"] == user, name
        secret = Path(env["CADR_KAFKA_SASL_PASSWORD_FILE"]).name
        assert secret in services[name]["secrets"] and secret in compose["secrets"], name
        assert env["CADR_KAFKA_BOOTSTRAP"] == "kafka:9094"
    worker = services["worker"]["environment"]
    assert worker["CADR_STORE_DSN"].startswith("https://")
    assert worker["CADR_STORE_USERNAME"] and worker["CADR_STORE_PASSWORD_FILE"].startswith("/run/secrets/")
    # only the worker shares a network with ClickHouse, and that network leads nowhere else
    store_members = {n for n, s in services.items() if "store" in s.get("networks", [])}
    assert store_members == {"clickhouse", "worker"}
    assert compose["networks"]["store"].get("internal") is True
    assert "kafka" not in services["clickhouse"].get("networks", [])
    # only the audit webhook is published, and only on loopback
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published == ["127.0.0.1:8443:8443"]


def test_the_broker_listens_only_for_sasl_ssl_and_denies_by_default() -> None:
    props = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "kafka" / "broker.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    listeners = props["listeners"].split(",")
    assert all(listener.startswith(("SASL_SSL://", "CONTROLLER://localhost:")) for listener in listeners)
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    lines = (ROOT / "deploy" / "kafka" / "acls.txt").read_text().splitlines()
    acls = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    writes = [a for a in acls if a[1] in ("Write", "All") and a[2] == "Topic"]
    raw_writers = {a[0] for a in writes if a[3] == "Literal" and a[4] == "cadr.raw"}
    assert raw_writers == {"cadr-sensor", "cadr-audit"}
    assert not [a for a in writes if a[3] == "Prefixed" and "cadr.raw".startswith(a[4])]


def test_kubernetes_components_use_sasl_ssl_and_https_with_secrets() -> None:
    workloads = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in _all_docs()
        if d["kind"] in ("Deployment", "DaemonSet")
    }
    for component, user in CADR_COMPONENTS.items():
        spec = workloads[component]["spec"]["template"]["spec"]
        env = _env(spec["containers"][0])
        assert env["CADR_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["CADR_KAFKA_SASL_USERNAME"] == user
        assert env["CADR_KAFKA_BOOTSTRAP"] == "kafka.cadr.svc:9094"
        secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        assert f"cadr-kafka-{component}" in secrets, component
    worker_env = _env(workloads["worker"]["spec"]["template"]["spec"]["containers"][0])
    assert worker_env["CADR_STORE_DSN"] == "https://clickhouse.cadr.svc:8443"
    assert worker_env["CADR_STORE_PASSWORD_FILE"] and worker_env["CADR_STORE_CA_FILE"]


def test_kubernetes_config_maps_hold_the_deploy_files_verbatim() -> None:
    (kafka,) = [d for d in _docs("kafka.yaml") if d["kind"] == "ConfigMap"]
    for name, text in kafka["data"].items():
        assert text == (ROOT / "deploy" / "kafka" / name).read_text(), name
    (clickhouse,) = [d for d in _docs("clickhouse.yaml") if d["kind"] == "ConfigMap"]
    server = ROOT / "deploy" / "clickhouse" / "server"
    for name, text in clickhouse["data"].items():
        (path,) = list(server.rglob(name))
        assert text == path.read_text(), name


def test_network_policies_let_only_cadr_reach_kafka_and_only_the_worker_reach_the_store() -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in _docs("networkpolicies.yaml")}
    deny = policies["cadr-default-deny"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    (store_rule,) = policies["cadr-clickhouse"]["ingress"]
    assert [f["podSelector"]["matchLabels"] for f in store_rule["from"]] == [
        {"app.kubernetes.io/name": "cadr", "app.kubernetes.io/component": "worker"}
    ]
    (kafka_rule,) = policies["cadr-kafka"]["ingress"]
    (source,) = kafka_rule["from"]
    components = next(
        e["values"]
        for e in source["podSelector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    )
    assert set(components) == {"sensor", "audit", "worker", "forward", "kafka-acls"}
    assert "namespaceSelector" not in source  # no pod of another namespace
    # every pod of the namespace is covered by some policy's selector (the default deny at least)
    labelled = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in _all_docs()
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
    }
    assert {"kafka", "clickhouse", "worker", "audit", "sensor"} <= labelled


def test_the_image_is_built_in_stages_and_ships_no_compiler() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) >= 2, "one stage: the build tools end up in the image"
    final = stages[-1]
    installs = " ".join(re.findall(r"apt-get install[^&]*", final))
    for tool in ("clang", "llvm", "bpftool", "make", "gcc", "libbpf-dev", "libelf-dev"):
        assert not re.search(rf"\b{re.escape(tool)}\b", installs), f"{tool} in the final image"
    assert "COPY --from=" in final and re.search(r"^USER (?!0\b|root\b)", final, flags=re.MULTILINE)
