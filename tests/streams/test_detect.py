"""The detect stage: which rules it loads (experimental rules only when the setting enables them)."""

from __future__ import annotations

from schemas.codec import decode_event
from schemas.settings import DetectSettings
from streams.detect import build_detector, scan_events

#: a request by a real user whose name is not on the allowed-user list (Falco's default list: minikube,
#: kubernetes-admin ...): CADR-K8S-0023 flags it, and would flag every real user of a real cluster
REAL_USER_GETS_PODS = decode_event(
    {
        "event_id": "k8s:u1:ResponseComplete",
        "time": 1_700_000_000_000_000_000,
        "source": "k8s_audit",
        "kind": "k8s_api",
        "audit": {
            "audit_id": "u1",
            "verb": "list",
            "user": "alice@example.com",
            "resource": "pods",
            "namespace": "shop",
            "response_code": 200,
        },
    }
)


def test_experimental_rules_are_not_loaded_by_default() -> None:
    detector = build_detector(DetectSettings())
    loaded = {r.id for r in detector.rules.rules}
    assert "CADR-K8S-0023" not in loaded and "CADR-K8S-0001" in loaded
    assert [a.rule_id for a in scan_events([REAL_USER_GETS_PODS], DetectSettings())] == []


def test_the_setting_loads_experimental_rules() -> None:
    settings = DetectSettings(experimental_rules=True)
    assert "CADR-K8S-0023" in {r.id for r in build_detector(settings).rules.rules}
    assert [a.rule_id for a in scan_events([REAL_USER_GETS_PODS], settings)] == ["CADR-K8S-0023"]
