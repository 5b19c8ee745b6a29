"""Retro-hunts: run one rule (cadr's or an imported Sigma rule) over the stored events, without Kafka.

The rule's condition becomes SQL (:mod:`streams.forensics.rule_sql`) that selects, in the events table, every event of
the rule's kinds in the time range that can match; ClickHouse does the scan. The selected events are then
fed in time order through a detector holding only that rule, so the hits come out as the same alerts (dedup,
counts, attribution) the live pipeline raises. When the condition translated exactly, the detector confirms
every selected event (a difference is reported, never hidden); when part of it has no SQL form (IP
arithmetic, a repeat count), the SQL is a superset and the detector decides.

Rules that need what the store cannot give are refused with the reason: anomaly rules (a learned baseline)
and rules that look at other events through ``state.written``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from schemas.codec import decode_event
from schemas.errors import CadrError, RecordError
from schemas.records import Alert, Event
from streams.forensics.rule_sql import SqlCondition, condition_sql, sql_literal
from streams.rules import Rule, RuleSet

__all__ = ["HuntError", "HuntPlan", "HuntResult", "hunt", "plan_hunt"]


class HuntError(CadrError):
    """A rule cannot be run over the store (the message says why)."""


@dataclass(frozen=True)
class HuntPlan:
    """The SQL of one hunt: ``sql`` with the ``since``/``until`` parameters (ns) bound by the server."""

    rule: Rule
    condition: SqlCondition
    #: the WHERE clause (time range, the rule's kinds, its condition)
    where: str
    sql: str


@dataclass
class HuntResult:
    plan: HuntPlan
    selected: int = 0
    matched: int = 0
    undecodable: int = 0
    alerts: list[Alert] = field(default_factory=list)
    hits: list[str] = field(default_factory=list)


def plan_hunt(ruleset: RuleSet, rule: Rule, database: str = "cadr") -> HuntPlan:
    """The SQL that selects the events ``rule`` can match between ``{since}`` and ``{until}``."""
    if rule.needs_baseline:
        raise HuntError(
            f"{rule.id} compares events with a learned baseline: retro-hunts run signature rules only"
        )
    if "state.written" in rule.condition:
        raise HuntError(
            f"{rule.id} looks at earlier events of other kinds (state.written): not hunted in the store"
        )
    if ruleset.compiler is None:
        raise HuntError("the rule set has no compiler")
    condition = condition_sql(ruleset.compiler, rule.condition)
    kinds = ", ".join(sql_literal(k.value) for k in rule.kinds)
    where = (
        f"time >= fromUnixTimestamp64Nano({{since:Int64}}) AND time < fromUnixTimestamp64Nano({{until:Int64}}) "
        f"AND kind IN ({kinds}) AND ({condition.where})"
    )
    table = f"{database}.events"
    # a replacing table may hold a duplicate delivery until it merges: one row per event id
    sql = f"SELECT raw FROM {table} WHERE {where} ORDER BY time, event_id LIMIT 1 BY event_id"
    return HuntPlan(rule=rule, condition=condition, where=where, sql=sql)


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Rows of a TabSeparatedRaw result (the raw JSON has no raw newline: JSON escapes them)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        yield rest


def hunt(
    reader: object,
    ruleset: RuleSet,
    rule: Rule,
    since_ns: int,
    until_ns: int,
    *,
    database: str = "cadr",
    cooldown_s: float = 300.0,
) -> HuntResult:
    """Run ``rule`` over the stored events of ``[since_ns, until_ns)``; ``reader`` is a
    :class:`~streams.forensics.reader.StoreReader` (anything with its ``stream``)."""
    from schemas.settings import DetectSettings
    from streams.detect import Detector

    plan = plan_hunt(ruleset, rule, database)
    result = HuntResult(plan=plan)
    only = RuleSet(rules=[rule], allow=ruleset.allow, compiler=ruleset.compiler)
    detector = Detector(rules=only, settings=DetectSettings(cooldown_s=cooldown_s))
    params = {"since": since_ns, "until": until_ns}
    latest: dict[str, Alert] = {}
    for line in _lines(reader.stream(plan.sql, params, fmt="TabSeparatedRaw")):  # type: ignore[attr-defined]
        if not line:
            continue
        result.selected += 1
        try:
            event: Event = decode_event(line)
        except RecordError:
            result.undecodable += 1
            continue
        before = detector.counters["matches"]
        for alert in detector.process(event):
            latest[alert.alert_id] = alert
        if detector.counters["matches"] > before:
            result.matched += 1
            result.hits.append(event.event_id)
    result.alerts = sorted(latest.values(), key=lambda a: (a.time, a.alert_id))
    return result
