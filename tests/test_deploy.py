"""docker-compose.yml and the Kubernetes manifests: they parse, and they say what they mean.

Compose cannot run here (no Docker engine): check that it parses and that every cadr
service runs a command the CLI has. Manifests are deserialized into the kubernetes client's
models and serialized back; a field the models do not know (a typo) makes the round trip
differ, so it fails here instead of at `kubectl apply`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cadr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _subcommands(parser: Any) -> dict[str, Any]:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def _command_exists(argv: list[str]) -> bool:
    parser = build_parser()
    for word in argv:
        if word.startswith("-"):
            break
        subs = _subcommands(parser)
        if not subs:
            break
        if word not in subs:
            return False
        parser = subs[word]
    return True


def test_compose_parses_and_every_cadr_service_command_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker", "audit", "sensor"} <= set(services)
    cadr_services = [s for s in services.values() if str(s.get("image", "")).startswith("cadr")]
    assert len(cadr_services) == 3
    for svc in cadr_services:
        assert _command_exists(svc["command"]), svc["command"]
    assert not _command_exists(["no-such-command"])
    # only the audit webhook is published, and only on loopback
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_round_trips_through_kubernetes_models(path: Path) -> None:
    api = client.ApiClient()
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        model = f"V1{doc['kind']}"
        obj = api._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]
        back = _clean(api.sanitize_for_serialization(obj))
        # the models stringify int-or-string values and quantities; compare as YAML text
        assert yaml.safe_dump(back, sort_keys=True) == yaml.safe_dump(_clean(doc), sort_keys=True), path


def test_manifests_cover_worker_audit_and_sensor() -> None:
    kinds = {
        (d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d
    }
    assert ("Deployment", "cadr-worker") in kinds
    assert any(k == "DaemonSet" for k, _ in kinds), "sensor DaemonSet missing"
    assert any(k == "Deployment" and "audit" in n for k, n in kinds), "audit intake Deployment missing"
    assert any(k == "Service" and "audit" in n for k, n in kinds), "audit intake Service missing"
