"""Every case of every rule, as one parametrized test; plus the rule and case loaders' errors.

Each rule folder's ``cases.yaml`` holds events the rule must fire on and realistic near misses it
must stay quiet on. ``streams.rule_cases`` runs each through a detector holding only that rule.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from streams.rule_cases import (
    CASE_FILE,
    Case,
    CaseError,
    Expect,
    UnloadableCases,
    collect_cases,
    load_cases,
    run_case,
    run_cases,
)
from streams.rules import RuleError, load_rules
from streams.rules.model import ATTACK_TACTICS

RULES = load_rules(experimental=True)
ITEMS = collect_cases(RULES)

_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$")
_TACTICS = ATTACK_TACTICS


@pytest.mark.parametrize("item", ITEMS, ids=[item.id for item in ITEMS])
def test_rule_case(item: Case | UnloadableCases) -> None:
    result = run_case(item, RULES)
    assert result.passed, f"{item.id}: {result.message}"


@pytest.mark.parametrize("rule", RULES.rules, ids=[r.id for r in RULES.rules])
def test_rule_metadata(rule) -> None:  # type: ignore[no-untyped-def]
    assert rule.mitre and all(_TECHNIQUE.match(t) for t in rule.mitre), rule.mitre
    assert rule.tactic in _TACTICS, f"{rule.tactic!r} is not an ATT&CK tactic short name"
    assert rule.story and rule.story[0].islower(), "story is a lower-case verb phrase"
    assert rule.path is not None and rule.path.parent.name.startswith(rule.id + "-")


SIGNATURES = [r for r in RULES.rules if r.source == "ebpf" and not r.needs_baseline]


@pytest.mark.parametrize("rule", SIGNATURES, ids=[r.id for r in SIGNATURES])
def test_signature_rules_have_two_cases_each_way(rule) -> None:  # type: ignore[no-untyped-def]
    cases = load_cases(rule)
    fire = [c for c in cases if c.expect is Expect.FIRE]
    assert len(fire) >= 2 and len(cases) - len(fire) >= 2
    assert rule.false_positives, "name the known false positives"


def test_token_rule_is_tagged_for_the_correlator() -> None:
    # streams.correlate links a token read to the API calls of the pod's service account by this tag
    assert "sa_token" in RULES.get("CADR-FILE-0001").tags


# -- rule loader errors ------------------------------------------------------------------------

_RULE = """\
id: {id}
name: Test rule
description: A rule for the loader tests.
severity: high
mitre: [T1059.004]
tactic: execution
source: ebpf
kinds: [process_exec]
condition: {condition}
output: "{{process.exe}} ran"
story: ran {{process.exe}}
"""

_CASES = """\
fire:
  - name: shell in a container
    event:
      source: ebpf
      kind: process_exec
      workload: {namespace: a, pod: p, container: c, container_id: c1}
      process: {exe: /bin/sh, args: [sh]}
no_fire:
  - name: shell on the host
    event: {source: ebpf, kind: process_exec, process: {exe: /bin/sh, args: [sh]}}
"""


def write_rule(
    root: Path,
    rule_id: str = "CADR-TEST-0001",
    condition: str = "spawned_process and in_container",
    rule_text: str | None = None,
    cases_text: str | None = _CASES,
    slug: str = "test",
) -> Path:
    folder = root / "ebpf" / f"{rule_id}-{slug}"
    folder.mkdir(parents=True)
    (folder / "rule.yaml").write_text(rule_text or _RULE.format(id=rule_id, condition=condition))
    if cases_text is not None:
        (folder / CASE_FILE).write_text(textwrap.dedent(cases_text))
    return folder


def test_a_valid_extra_rule_loads_and_its_cases_pass(tmp_path: Path) -> None:
    write_rule(tmp_path)
    rules = load_rules([tmp_path])
    results = run_cases(rules, ["CADR-TEST-0001"])
    assert [(r.case, r.passed) for r in results] == [
        ("shell in a container", True),
        ("shell on the host", True),
    ]


def test_missing_field_names_the_file_and_field(tmp_path: Path) -> None:
    text = _RULE.format(id="CADR-TEST-0001", condition="spawned_process").replace("severity: high\n", "")
    folder = write_rule(tmp_path, rule_text=text)
    with pytest.raises(RuleError, match=r"rule\.yaml: missing severity") as err:
        load_rules([tmp_path], include_builtin=False)
    assert str(folder) in str(err.value)


def test_unknown_field_in_condition_fails_at_load(tmp_path: Path) -> None:
    write_rule(tmp_path, condition="spawned_process and process.exee = /bin/sh")
    with pytest.raises(RuleError, match=r"unknown field 'process\.exee'"):
        load_rules([tmp_path])


def test_misspelt_macro_fails_at_load(tmp_path: Path) -> None:
    write_rule(tmp_path, condition="spawned_proces and in_container")
    with pytest.raises(RuleError, match="unknown macro or field 'spawned_proces'"):
        load_rules([tmp_path])


def test_unknown_field_in_output_fails_at_load(tmp_path: Path) -> None:
    text = _RULE.format(id="CADR-TEST-0001", condition="spawned_process").replace(
        "{process.exe} ran", "{proc.exe} ran"
    )
    write_rule(tmp_path, rule_text=text)
    with pytest.raises(RuleError, match=r"unknown field 'proc\.exe'"):
        load_rules([tmp_path])


def test_duplicate_id_names_both_files(tmp_path: Path) -> None:
    first = write_rule(tmp_path, slug="one")
    second = write_rule(tmp_path, slug="two")
    with pytest.raises(RuleError, match="already used by") as err:
        load_rules([tmp_path])
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_duplicate_of_a_builtin_id_is_refused(tmp_path: Path) -> None:
    write_rule(tmp_path, rule_id="CADR-PROC-0001")
    with pytest.raises(RuleError, match="CADR-PROC-0001 already used"):
        load_rules([tmp_path])


def test_unknown_key_and_bad_id_are_refused(tmp_path: Path) -> None:
    write_rule(
        tmp_path, rule_text=_RULE.format(id="CADR-TEST-0001", condition="spawned_process") + "severity_x: 1\n"
    )
    with pytest.raises(RuleError, match="unknown key"):
        load_rules([tmp_path], include_builtin=False)
    other = tmp_path / "other"
    write_rule(other, rule_id="PROC-1")
    with pytest.raises(RuleError, match="must look like CADR-"):
        load_rules([other], include_builtin=False)


# -- case file errors --------------------------------------------------------------------------


def _rule_with_cases(tmp_path: Path, cases_text: str | None) -> Path:
    write_rule(tmp_path, cases_text=cases_text)
    return tmp_path


@pytest.mark.parametrize(
    ("cases_text", "message"),
    [
        ("fire: []\nno_fire: []\n", "needs at least one fire case"),
        (_CASES.split("no_fire:")[0], "needs at least one no_fire case"),
        (_CASES + "maybe: []\n", "unknown key"),
        (_CASES.replace("    event: {source", "    expect: x\n    event: {source"), "unknown key.*expect"),
        (_CASES.replace("  - name: shell on the host\n", "  - note: no name\n"), "missing name"),
        (_CASES.replace("shell on the host", "shell in a container"), "used twice"),
        (_CASES.replace("exe: /bin/sh, args: [sh]}}", "exe: 42}}"), r"shell on the host.*\$\.process\.exe"),
        (_CASES.replace("kind: process_exec, ", ""), "shell on the host.*kind"),
        ("[1, 2]\n", "expected a mapping"),
        ("fire: [\n", "invalid YAML"),
    ],
    ids=[
        "no fire",
        "no no_fire",
        "unknown top key",
        "unknown case key",
        "no name",
        "duplicate name",
        "bad field type",
        "missing kind",
        "not a mapping",
        "bad yaml",
    ],
)
def test_case_file_errors(tmp_path: Path, cases_text: str, message: str) -> None:
    rules = load_rules([_rule_with_cases(tmp_path, cases_text)])
    with pytest.raises(CaseError, match=message):
        load_cases(rules.get("CADR-TEST-0001"))
    # the runner reports it as one failing result instead of stopping
    [result] = run_cases(rules, ["CADR-TEST-0001"])
    assert not result.passed and result.case == CASE_FILE and re.search(message, result.message)


def test_missing_case_file_is_an_error(tmp_path: Path) -> None:
    rules = load_rules([_rule_with_cases(tmp_path, None)])
    with pytest.raises(CaseError, match="missing"):
        load_cases(rules.get("CADR-TEST-0001"))


def test_unknown_rule_id_is_an_error() -> None:
    with pytest.raises(CaseError, match="no such rule: CADR-NOPE-0001"):
        collect_cases(RULES, ["CADR-NOPE-0001"])


def test_baseline_errors(tmp_path: Path) -> None:
    text = _CASES.replace(
        "      process: {exe: /bin/sh, args: [sh]}\n",
        "      process: {exe: /bin/sh, args: [sh]}\n"
        "    baseline: {execs: {/bin/sh: ['']}, syscalls: [open]}\n",
        1,
    )
    rules = load_rules([_rule_with_cases(tmp_path, text)])
    with pytest.raises(CaseError, match=r"unknown baseline key.*syscalls"):
        load_cases(rules.get("CADR-TEST-0001"))
    host = tmp_path / "host"
    text = _CASES + "    baseline: {execs: {}}\n"
    rules = load_rules([_rule_with_cases(host, text)])
    with pytest.raises(CaseError, match="needs a container workload"):
        load_cases(rules.get("CADR-TEST-0001"))


# -- what the runner does ----------------------------------------------------------------------


def test_a_case_that_does_not_behave_fails_with_a_reason(tmp_path: Path) -> None:
    swapped = _CASES.replace("fire:", "tmp:").replace("no_tmp:", "fire:").replace("tmp:", "no_fire:", 1)
    rules = load_rules([_rule_with_cases(tmp_path, swapped)])
    results = {r.case: r for r in run_cases(rules, ["CADR-TEST-0001"])}
    host, pod = results["shell on the host"], results["shell in a container"]
    assert (host.expected, host.got, host.passed) == (Expect.FIRE, Expect.NO_FIRE, False)
    assert "did not fire; condition: spawned_process and in_container" in host.message
    assert (pod.expected, pod.got, pod.passed) == (Expect.NO_FIRE, Expect.FIRE, False)
    assert pod.message.startswith("fired but must not: /bin/sh ran")


def test_wrong_event_kind_is_pointed_out(tmp_path: Path) -> None:
    text = _CASES.replace("kind: process_exec\n", "kind: file_open\n      file: {path: /bin/sh}\n", 1)
    rules = load_rules([_rule_with_cases(tmp_path, text)])
    result = run_cases(rules, ["CADR-TEST-0001"])[0]
    assert (
        not result.passed
        and "event kind file_open is not among the rule's kinds: process_exec" in result.message
    )


def test_before_events_build_state(tmp_path: Path) -> None:
    cases = """\
    fire:
      - name: written then run
        before:
          - {source: ebpf, kind: file_open, workload: &pod {pod: p, container_id: c1},
             file: {path: /x, write: true}}
        event: &run {source: ebpf, kind: process_exec, workload: *pod, process: {exe: /x}}
    no_fire:
      - name: run without the write
        event: *run
    """
    write_rule(tmp_path, condition="spawned_process and state.written(process.exe)", cases_text=cases)
    rules = load_rules([tmp_path])
    items = collect_cases(rules, ["CADR-TEST-0001"])
    assert [i.before[0].time < i.event.time for i in items if isinstance(i, Case) and i.before] == [True]
    assert all(r.passed for r in run_cases(rules, ["CADR-TEST-0001"]))


def test_baseline_is_installed_as_a_complete_profile(tmp_path: Path) -> None:
    cases = """\
    fire:
      - name: exec outside the profile
        baseline: {execs: {/usr/sbin/nginx: ["-g *"]}}
        event: &sh
          source: ebpf
          kind: process_exec
          workload: {namespace: a, pod: p, container: c, container_id: c1}
          process: {exe: /bin/sh, args: [sh]}
    no_fire:
      - name: exec in the profile
        baseline: {execs: {/bin/sh: [""]}}
        event: *sh
      - name: no profile yet (learning)
        event: *sh
    """
    write_rule(tmp_path, condition="spawned_process and not baseline.seen_exec()", cases_text=cases)
    rules = load_rules([tmp_path])
    results = run_cases(rules, ["CADR-TEST-0001"])
    assert [(r.case, r.passed) for r in results] == [
        ("exec outside the profile", True),
        ("exec in the profile", True),
        ("no profile yet (learning)", True),
    ]


def test_a_case_may_redefine_lists_and_macros_like_a_site_file(tmp_path: Path) -> None:
    # a rule that is off by default (its gate macro never matches) shows it fires once a site enables it
    (tmp_path / "macros.yaml").write_text(
        "lists:\n  allowed_shells: []\nmacros:\n  shell_policy_on: kind = never\n"
    )
    cases = """\
    fire:
      - name: policy on, shell not allowed
        macros: {shell_policy_on: spawned_process}
        lists: {allowed_shells: [/bin/bash]}
        event: &sh
          {source: ebpf, kind: process_exec, workload: {pod: p, container_id: c}, process: {exe: /bin/sh}}
    no_fire:
      - name: off by default
        event: *sh
      - name: policy on, shell allowed
        macros: {shell_policy_on: spawned_process}
        lists: {allowed_shells: [/bin/sh]}
        event: *sh
    """
    write_rule(
        tmp_path, condition="shell_policy_on and not process.exe in (allowed_shells)", cases_text=cases
    )
    rules = load_rules([tmp_path])
    results = run_cases(rules, ["CADR-TEST-0001"])
    assert all(r.passed for r in results), results
    # the shared rule object is untouched by a case's redefinitions
    assert run_case(load_cases(rules.get("CADR-TEST-0001"))[1], rules).passed


def test_case_macro_that_does_not_compile_fails_the_case(tmp_path: Path) -> None:
    cases = _CASES.replace(
        "  - name: shell in a container\n",
        "  - name: shell in a container\n    macros: {in_container: process.nope}\n",
    )
    rules = load_rules([_rule_with_cases(tmp_path, cases)])
    result = run_cases(rules, ["CADR-TEST-0001"])[0]
    assert not result.passed and result.got is None and "unknown field 'process.nope'" in result.message


def test_case_ids_are_rule_and_case_name() -> None:
    ids = [item.id for item in ITEMS]
    assert "CADR-PROC-0001::bash -i with a tty in a pod container" in ids
    assert len(ids) == len(set(ids))
