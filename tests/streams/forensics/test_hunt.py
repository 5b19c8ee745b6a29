"""Retro-hunts over a real embedded ClickHouse (chdb): a rule's SQL selects the events its compiled
condition matches.

Every case event of every built-in rule is stored through the store writer (the same fast path as the
worker's store stage); then, for each rule whose condition translated exactly, the SQL alone must select
exactly the events the compiled predicate accepts — across 80-odd rules that is the translator's test of
fields, lists, macros, negation, absent values and functions. Rules with approximated terms must select a
superset, and the hunt (SQL + the rule) must then give the live result.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pytest

from schemas.codec import encode
from schemas.records import Alert, Event
from streams.detect import DetectState, scan_events
from streams.forensics.hunt import HuntError, hunt, plan_hunt
from streams.forensics.reader import StoreReader
from streams.rule_cases import Case, collect_cases
from streams.rules import EvalContext, RuleSet, load_rules
from streams.store.client import open_client
from streams.store.sink import StoreWriter

RULES = load_rules(experimental=True)
T0 = 1_790_000_000_000_000_000


def _case_events() -> list[Event]:
    """Every fire/no_fire/before event of every rule's cases, with unique ids and increasing times."""
    out: list[Event] = []
    counter = itertools.count()
    for item in collect_cases(RULES):
        if not isinstance(item, Case) or item.lists or item.macros:
            continue
        for e in (*item.before, item.event):
            n = next(counter)
            out.append(msgspec.structs.replace(e, event_id=f"case-{n}", time=T0 + n * 1_000_000))
    return out


EVENTS = _case_events()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StoreReader:
    path = tmp_path_factory.mktemp("hunt") / "store"
    dsn = f"chdb://{path}"
    with StoreWriter(dsn) as writer:
        writer.open()
        report = writer.write_events([encode(e) for e in EVENTS])
        assert report.rejected == 0 and report.inserted == len(EVENTS)
    reader = StoreReader(open_client(dsn, readonly=True), "cadr", route="test")
    yield reader
    reader.close()


def _sql_hits(reader: StoreReader, rule_id: str) -> set[str]:
    plan = plan_hunt(RULES, RULES.get(rule_id))
    sql = plan.sql.replace("SELECT raw", "SELECT event_id", 1)
    rows = reader.rows(sql, {"since": 0, "until": T0 * 2})
    return {r[0] for r in rows}


def _live_hits(rule_id: str) -> set[str]:
    """What the compiled rule matches, evaluated in time order with detect state (as the detect stage)."""
    rule, state = RULES.get(rule_id), DetectState()
    return {
        e.event_id
        for e in EVENTS
        if e.kind in rule.kinds and rule.predicate(EvalContext(event=e, state=state))
    }


#: rules whose every fire case redefines lists or macros (off until a site sets them): not stored here
GATED = {"CADR-K8S-0025"}
HUNTABLE = [r.id for r in RULES.rules if not r.needs_baseline and "state.written" not in r.condition]


def test_every_case_event_is_stored(store: StoreReader) -> None:
    assert store.rows("SELECT uniqExact(event_id) FROM cadr.events")[0][0] == len(EVENTS) > 400


@pytest.mark.parametrize("rule_id", HUNTABLE)
def test_the_sql_selects_what_the_rule_matches(store: StoreReader, rule_id: str) -> None:
    plan = plan_hunt(RULES, RULES.get(rule_id))
    sql, live = _sql_hits(store, rule_id), _live_hits(rule_id)
    if plan.condition.exact:
        assert sql == live, f"SQL-only {sorted(sql - live)[:5]}, rule-only {sorted(live - sql)[:5]}"
    else:
        assert live <= sql, f"the SQL bound misses {sorted(live - sql)[:5]}"
    assert live or rule_id in GATED, "every rule has a fire case among the stored events"


def test_most_rules_translate_exactly() -> None:
    exact = [r for r in HUNTABLE if plan_hunt(RULES, RULES.get(r)).condition.exact]
    print(f"\n{len(exact)} of {len(HUNTABLE)} huntable rules translate to SQL exactly")
    assert len(exact) >= 0.8 * len(HUNTABLE)


def test_hunt_gives_the_live_alerts_for_an_approximated_rule(store: StoreReader) -> None:
    # CADR-K8S-0029 counts denials per user (no SQL form): the SQL selects every denial, the rule counts
    rule = RULES.get("CADR-K8S-0029")
    result = hunt(store, RULES, rule, 0, T0 * 2)
    assert not result.plan.condition.exact and result.selected > result.matched > 0
    live = scan_events(EVENTS, rules=RuleSet(rules=[rule], compiler=RULES.compiler))
    assert [(a.alert_id, a.count) for a in result.alerts] == _final(live)
    users = {a.event.audit.user for a in result.alerts if a.event and a.event.audit}
    assert "bob@contoso.onmicrosoft.com" in users and "u1@contoso.onmicrosoft.com" not in users


def _final(alerts: list[Alert]) -> list[tuple[str, int]]:
    """The last state of each alert (dedup re-publishes an alert as its count grows)."""
    latest = {a.alert_id: a for a in alerts}
    return [(a.alert_id, a.count) for a in sorted(latest.values(), key=lambda a: (a.time, a.alert_id))]


def test_rules_the_store_cannot_answer_are_refused() -> None:
    with pytest.raises(HuntError, match="learned baseline"):
        plan_hunt(RULES, RULES.get("CADR-ANOM-0001"))
    with pytest.raises(HuntError, match=r"state\.written"):
        plan_hunt(RULES, RULES.get("CADR-PROC-0003"))


def test_hunt_rows_are_one_per_event_and_in_time_order(store: StoreReader, tmp_path: Path) -> None:
    result = hunt(store, RULES, RULES.get("CADR-PROC-0004"), 0, T0 * 2)
    assert result.matched == len(_live_hits("CADR-PROC-0004")) and result.undecodable == 0
    times = [a.time for a in result.alerts]
    assert times == sorted(times)
