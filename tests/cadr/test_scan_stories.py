"""`cadr scan --stories`: whole scenarios offline (no Kafka), as a rule author runs them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cadr.cli import main
from cadr.scenario import attack_events
from schemas.codec import encode


def test_scan_tells_the_attack_as_one_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "attack.jsonl"
    other = attack_events(namespace="billing", pod="billing-1-x", pod_ip="10.42.0.99", tag="other")
    capture.write_bytes(b"".join(encode(e) + b"\n" for e in [*attack_events(tag="one"), *other]))
    assert main(["scan", "--stories", "--json", str(capture)]) == 0
    incidents = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(incidents) == 2  # the same attack in two workloads: two stories
    inc = next(i for i in incidents if i["workloads"][0]["namespace"] == "payments")
    rules = {a["rule_id"] for a in inc["alerts"]}
    assert {"CADR-K8S-0001", "CADR-PROC-0001", "CADR-PROC-0003", "CADR-FILE-0001", "CADR-K8S-0028"} <= rules
    assert {"exec_session", "process_tree", "token_api"} <= set(inc["threads"])
    assert {"kind": "user", "name": "alice@example.com"} in inc["actors"]
    assert {"kind": "service_account", "name": "system:serviceaccount:payments:payments-api"} in inc["actors"]
    assert inc["severity"] == "critical"
    assert "listed the secrets of payments through the API" in inc["summary"]


def test_scan_stories_text_renders_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "attack.jsonl"
    capture.write_bytes(b"".join(encode(e) + b"\n" for e in attack_events()))
    assert main(["scan", "--stories", str(capture)]) == 0
    out = capsys.readouterr().out
    assert "Story graph" in out and "(kubectl exec session)" in out and "(token used for API call)" in out
