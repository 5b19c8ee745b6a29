"""``cadr rules test|list|docs`` through the real command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cadr.cli import main
from cadr.commands.rules import render_docs
from streams.rules import load_rules

REPO = Path(__file__).resolve().parents[2]

_RULE = """\
id: CADR-TEST-0001
name: Shell in a test pod
description: A rule for the command tests.
severity: high
mitre: [T1059.004]
tactic: execution
source: ebpf
kinds: [process_exec]
condition: spawned_process and in_container and shell_procs
output: "{process.exe} ran"
story: ran a shell
"""

_CASES = """\
fire:
  - name: sh in a pod
    event: {source: ebpf, kind: process_exec, workload: {pod: p, container_id: c1}, process: {exe: /bin/sh}}
no_fire:
  - name: sh on the host
    event: {source: ebpf, kind: process_exec, process: {exe: /bin/sh}}
"""


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./cadr.toml is picked up
    monkeypatch.delenv("CADR_CONFIG", raising=False)
    folder = tmp_path / "rules" / "ebpf" / "CADR-TEST-0001-shell"
    folder.mkdir(parents=True)
    (folder / "rule.yaml").write_text(_RULE)
    (folder / "cases.yaml").write_text(_CASES)
    return tmp_path / "rules"


def test_rules_test_prints_a_table_and_passes(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "test", "--rules-dir", str(rules_dir), "--rule", "CADR-TEST-0001"])
    out = capsys.readouterr().out
    assert code == 0
    assert "pass    CADR-TEST-0001  fire     sh in a pod" in out
    assert "pass    CADR-TEST-0001  no_fire  sh on the host" in out
    assert out.rstrip().endswith("2 cases of 1 rules: 2 passed, 0 failed")


def test_rules_test_exits_1_on_a_failing_case(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = rules_dir / "ebpf" / "CADR-TEST-0001-shell" / "cases.yaml"
    cases.write_text(_CASES.replace("workload: {pod: p, container_id: c1}, ", ""))
    code = main(
        ["rules", "test", "--rules-dir", str(rules_dir), "--rule", "CADR-TEST-0001", "--json", "--failed"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert lines == [
        {
            "rule_id": "CADR-TEST-0001",
            "case": "sh in a pod",
            "expected": "fire",
            "got": "no_fire",
            "passed": False,
            "message": lines[0]["message"],
        }
    ]
    assert lines[0]["message"].startswith("did not fire")


def test_rules_test_unknown_rule_is_an_error(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", "--rule", "CADR-NOPE-0001"]) == 1
    assert "cadr: error: no such rule: CADR-NOPE-0001" in capsys.readouterr().err


def test_rules_list(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list", "--json", "--rules-dir", str(rules_dir)]) == 0
    rules = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rules["CADR-TEST-0001"]["severity"] == "high" and rules["CADR-TEST-0001"]["mitre"] == ["T1059.004"]
    assert rules["CADR-FILE-0001"]["tags"][0] == "sa_token"
    assert main(["rules", "list"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("ID") and re.search(r"^CADR-PROC-0001 +high +ebpf +stable +yes ", table, re.M)


def test_rules_list_shows_experimental_rules_as_not_loaded_until_the_setting(
    rules_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["rules", "list", "--json"]) == 0
    rules = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rules["CADR-K8S-0023"]["maturity"] == "experimental" and rules["CADR-K8S-0023"]["enabled"] is False
    assert rules["CADR-K8S-0001"]["maturity"] == "stable" and rules["CADR-K8S-0001"]["enabled"] is True
    assert main(["rules", "list"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^CADR-K8S-0023 +low +k8s_audit +experimental +no ", table, re.M)
    assert "experimental rules are not loaded (set detect.experimental_rules = true)" in table
    monkeypatch.setenv("CADR_DETECT_EXPERIMENTAL_RULES", "true")
    assert main(["rules", "list", "--json"]) == 0
    rules = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rules["CADR-K8S-0023"]["enabled"] is True


def test_rules_docs_writes_and_checks(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = rules_dir.parent / "docs" / "rules.md"
    assert main(["rules", "docs", "--output", str(out), "--check"]) == 1
    assert "is out of date" in capsys.readouterr().err
    assert main(["rules", "docs", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| [CADR-PROC-0004](#cadr-proc-0004) | Reverse shell | critical |" in text
    assert "[T1059.004](https://attack.mitre.org/techniques/T1059/004/)" in text
    assert main(["rules", "docs", "--output", str(out), "--check"]) == 0
    # an extra rules dir changes the table, so the check fails until the docs are regenerated
    assert main(["rules", "docs", "--output", str(out), "--check", "--rules-dir", str(rules_dir)]) == 1


def test_docs_in_the_repository_are_generated_from_the_rules() -> None:
    committed = (REPO / "docs" / "rules.md").read_text()
    assert committed == render_docs(load_rules(experimental=True)), (
        "docs/rules.md is stale: run `cadr rules docs`"
    )


def test_coverage_doc_is_generated_from_the_mapping_and_the_rules() -> None:
    from cadr.commands.rules import coverage_text

    committed = (REPO / "docs" / "coverage.md").read_text()
    assert committed == coverage_text(), "docs/coverage.md is stale: run `cadr rules coverage`"
    # the three rule sets, each rule once (Falco's 25 default syscall rules, 48 k8saudit rules, 29 Kubescape)
    assert "| Falco default syscall rules | 25 |" in committed
    assert "| Falco k8saudit plugin rules | 48 |" in committed
    assert "| Kubescape runtime rule library | 29 |" in committed


def test_coverage_mapping_must_name_existing_rules(tmp_path: Path) -> None:
    from streams.rules import RuleError
    from streams.rules.coverage import load_coverage

    bad = tmp_path / "coverage.yaml"
    bad.write_text("sets:\n  - {key: x, title: X, source: s, rules: {Some rule: [CADR-NOPE-0001]}}\n")
    with pytest.raises(RuleError, match="no such cadr rule CADR-NOPE-0001"):
        load_coverage(load_rules(), bad)
    bad.write_text("sets:\n  - {key: x, title: X, source: s, rules: {Some rule: maybe}}\n")
    with pytest.raises(RuleError, match="must map to"):
        load_coverage(load_rules(), bad)
