"""Rule cases: the events a rule must and must not fire on, and the runner that checks them.

Every rule folder ships a ``cases.yaml`` (see streams/rules/FORMAT.md) with at least one ``fire`` and one
``no_fire`` case. Each case runs through a fresh :class:`streams.detect.Detector` holding only
its rule (the shared lists and macros still come from the full load): ``before`` events are
fed first to build state (process tree, files written), ``baseline`` is installed as a
complete profile for the case's workload, then the case event is processed and the alerts
of that rule are compared with what the case expects. A case may redefine shared ``lists``
and ``macros`` the way a site ``macros.yaml`` does (to show a rule that is off by default
firing once a site turns it on).

It lives above :mod:`streams.detect`, not in :mod:`streams.rules`: it runs rules through the detector, and
the rules package is what the detector is built on.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.codec import decode, decode_event
from schemas.errors import RecordError
from schemas.records import Event, Profile, ProfileStatus
from schemas.settings import DetectSettings
from streams.baseline import profile_key
from streams.detect import Detector
from streams.rules.condition import Compiler
from streams.rules.model import Rule, RuleError
from streams.rules.ruleset import RuleSet

__all__ = [
    "CASE_FILE",
    "Case",
    "CaseError",
    "CaseResult",
    "Expect",
    "UnloadableCases",
    "collect_cases",
    "load_cases",
    "run_case",
    "run_cases",
]

CASE_FILE = "cases.yaml"

#: event time of the first event of a case when the YAML leaves it out (2023-11-14, UTC)
BASE_TIME_NS = 1_700_000_000 * 10**9
#: spacing of defaulted event times: before events first, the case event last
STEP_NS = 10**9

_CASE_KEYS = {"name", "event", "before", "baseline", "lists", "macros"}
_BASELINE_KEYS = {
    "execs",
    "files",
    "writes",
    "egress",
    "dns",
    "listen_ports",
    "privileges",
    "image",
    "release",
}


class CaseError(RuleError):
    """A ``cases.yaml`` is invalid; the message names the file, the case and the field."""


class Expect(enum.StrEnum):
    FIRE = "fire"
    NO_FIRE = "no_fire"


@dataclass(frozen=True)
class Case:
    """One event a rule must (``fire``) or must not (``no_fire``) alert on."""

    rule_id: str
    name: str
    expect: Expect
    event: Event
    before: tuple[Event, ...] = ()
    baseline: Profile | None = None
    #: shared lists/macros this case redefines (site tuning), empty for most cases
    lists: Mapping[str, list[Any]] = field(default_factory=dict)
    macros: Mapping[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def id(self) -> str:
        """The pytest id: ``CADR-PROC-0001::bash -i with a tty``."""
        return f"{self.rule_id}::{self.name}"


@dataclass(frozen=True)
class UnloadableCases:
    """A rule whose ``cases.yaml`` could not be loaded: reported as one failing result, so one
    broken file does not hide the results of every other rule."""

    rule_id: str
    message: str

    @property
    def id(self) -> str:
        return f"{self.rule_id}::{CASE_FILE}"


@dataclass(frozen=True)
class CaseResult:
    """What running one case gave: ``got`` is FIRE when the rule alerted on the case event."""

    rule_id: str
    case: str
    #: None when the case could not be loaded or run (``message`` says why)
    expected: Expect | None
    got: Expect | None
    #: the alert's message when the rule fired, else why the case failed (or "")
    message: str

    @property
    def passed(self) -> bool:
        return self.expected is not None and self.expected is self.got


def _event(raw: Any, where: str, index: int) -> Event:
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: an event must be a mapping")
    data = dict(raw)
    data.setdefault("event_id", f"case-{index}")
    data.setdefault("time", BASE_TIME_NS + index * STEP_NS)
    try:
        return decode_event(data)
    except RecordError as exc:
        raise CaseError(f"{where}: {exc}") from exc


def _baseline(raw: Any, event: Event, where: str) -> Profile:
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: baseline must be a mapping")
    unknown = sorted(set(raw) - _BASELINE_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown baseline key(s) {', '.join(unknown)}")
    if event.workload.is_host:
        raise CaseError(f"{where}: a baseline needs a container workload (host events have no profile)")
    data = {
        **raw,
        "workload_key": event.workload.key(),
        "container": event.workload.container,
        "status": ProfileStatus.COMPLETE.value,
    }
    try:
        return decode(data, Profile)
    except RecordError as exc:
        raise CaseError(f"{where}: baseline: {exc}") from exc


def _overrides(raw: Any, key: str, where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise CaseError(f"{where}: {key} must be a mapping of names")
    for name, item in value.items():
        if key == "lists" and not isinstance(item, list):
            raise CaseError(f"{where}: list {name!r} must be a YAML list")
        if key == "macros" and not isinstance(item, str):
            raise CaseError(f"{where}: macro {name!r} must be a condition string")
    if key == "macros":
        return {str(k): " ".join(v.split()) for k, v in value.items()}
    return {str(k): list(v) for k, v in value.items()}


def _case(raw: Any, rule_id: str, expect: Expect, path: Path, position: int) -> Case:
    where = f"{path}: {expect.value}[{position}]"
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a case must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CaseError(f"{where}: missing name")
    where = f"{path}: {expect.value} case {name!r}"
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if "event" not in raw:
        raise CaseError(f"{where}: missing event")
    before_raw = raw.get("before") or []
    if not isinstance(before_raw, list):
        raise CaseError(f"{where}: before must be a list of events")
    before = tuple(_event(e, f"{where}: before[{i}]", i) for i, e in enumerate(before_raw))
    event = _event(raw["event"], f"{where}: event", len(before))
    baseline = _baseline(raw["baseline"], event, where) if raw.get("baseline") is not None else None
    return Case(
        rule_id=rule_id,
        name=name.strip(),
        expect=expect,
        event=event,
        before=before,
        baseline=baseline,
        lists=_overrides(raw, "lists", where),
        macros=_overrides(raw, "macros", where),
        path=path,
    )


def load_cases(rule: Rule) -> list[Case]:
    """The cases of one rule, from ``cases.yaml`` next to its ``rule.yaml``.

    Raises :class:`CaseError` when the file is missing or invalid, or lacks a ``fire`` or a
    ``no_fire`` case (every rule proves both that it catches and that it stays quiet)."""
    if rule.path is None:
        raise CaseError(f"{rule.id}: rule has no folder, so no {CASE_FILE}")
    path = rule.path.parent / CASE_FILE
    if not path.exists():
        raise CaseError(f"{path}: missing (every rule ships must-fire and must-not-fire cases)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CaseError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CaseError(f"{path}: expected a mapping with fire and no_fire lists")
    unknown = sorted(set(data) - {e.value for e in Expect})
    if unknown:
        raise CaseError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}")
    cases: list[Case] = []
    for expect in Expect:
        items = data.get(expect.value)
        if not isinstance(items, list) or not items:
            raise CaseError(f"{path}: needs at least one {expect.value} case")
        cases.extend(_case(raw, rule.id, expect, path, i) for i, raw in enumerate(items))
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise CaseError(f"{path}: case name {case.name!r} is used twice")
        seen.add(case.name)
    return cases


def collect_cases(ruleset: RuleSet, rule_ids: Sequence[str] = ()) -> list[Case | UnloadableCases]:
    """Every case of every rule in ``ruleset`` (or of the rules named in ``rule_ids``), in rule
    id order; a rule whose case file is invalid contributes one :class:`UnloadableCases`."""
    wanted = set(rule_ids)
    missing = sorted(wanted - {r.id for r in ruleset.rules})
    if missing:
        raise CaseError(f"no such rule: {', '.join(missing)}")
    items: list[Case | UnloadableCases] = []
    for rule in sorted(ruleset.rules, key=lambda r: r.id):
        if wanted and rule.id not in wanted:
            continue
        if rule.origin and rule.path is not None and not (rule.path.parent / CASE_FILE).exists():
            continue  # imported (Sigma) without cases: its origin's tests are not ours to ship
        try:
            items.extend(load_cases(rule))
        except CaseError as exc:
            items.append(UnloadableCases(rule_id=rule.id, message=str(exc)))
    return items


def _rule_for(case: Case, ruleset: RuleSet) -> Rule:
    """The case's rule, recompiled with the case's list/macro redefinitions if it has any."""
    rule = ruleset.get(case.rule_id)
    if not case.lists and not case.macros:
        return rule
    base = ruleset.compiler
    if base is None:
        raise CaseError(f"{case.id}: the rule set has no compiler to apply the case's lists/macros")
    compiler = Compiler({**base.lists, **case.lists}, {**base.macros, **case.macros}, base.functions)
    tuned = dataclasses.replace(rule)
    tuned.compile(compiler)
    return tuned


def run_case(
    case: Case | UnloadableCases, ruleset: RuleSet, settings: DetectSettings | None = None
) -> CaseResult:
    """Run one case against a detector that holds only the case's rule."""
    if isinstance(case, UnloadableCases):
        return CaseResult(rule_id=case.rule_id, case=CASE_FILE, expected=None, got=None, message=case.message)
    try:
        rule = _rule_for(case, ruleset)
    except RuleError as exc:
        return CaseResult(
            rule_id=case.rule_id, case=case.name, expected=case.expect, got=None, message=str(exc)
        )
    only = RuleSet(rules=[rule], compiler=ruleset.compiler)
    detector = Detector(rules=only, settings=settings or DetectSettings())
    if case.baseline is not None:
        detector.profiles[profile_key(case.event)] = case.baseline
    for event in case.before:
        detector.process(event)
    alerts = [a for a in detector.process(case.event) if a.rule_id == rule.id]
    got = Expect.FIRE if alerts else Expect.NO_FIRE
    if got is case.expect:
        message = alerts[0].message if alerts else ""
    elif alerts:
        message = f"fired but must not: {alerts[0].message}"
    else:
        hint = ""
        if case.event.kind not in rule.kinds:
            kinds = ", ".join(k.value for k in rule.kinds)
            hint = f" (event kind {case.event.kind.value} is not among the rule's kinds: {kinds})"
        message = f"did not fire{hint}; condition: {rule.condition}"
    return CaseResult(rule_id=rule.id, case=case.name, expected=case.expect, got=got, message=message)


def run_cases(
    ruleset: RuleSet, rule_ids: Sequence[str] = (), settings: DetectSettings | None = None
) -> list[CaseResult]:
    """Run every case of every rule (or of ``rule_ids``); results in rule id order."""
    return [run_case(item, ruleset, settings) for item in collect_cases(ruleset, rule_ids)]
