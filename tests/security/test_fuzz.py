"""Issue 13, item 7: a small fuzz run (hypothesis) over the three decoders of hostile input.

- the audit normalizer and the webhook's body processing: any item is an event or a dead letter with a reason,
  each item of a batch exactly once, and nothing raises;
- the event decoder of the hot topics (``schemas.codec.decode_events``): any record value is events or a
  :class:`RecordError` (a dead letter), never another exception;
- the rule condition parser: any text compiles or raises :class:`ConditionError`.

The runs are bounded (a few hundred examples, no deadline: timing belongs to benchmarks). The fuzzing found two
crashes that the regression tests at the end pin down: a record nested ~1,000 deep raised RecursionError out of
the event decoder (taking the enrich stage down, again at each redelivery), and a condition with ~1,000 nested
parentheses or ``not`` raised RecursionError out of the rule compiler.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode_events, encode
from schemas.errors import RecordError
from sensors.audit.batch import process_body
from sensors.audit.errors import AuditFormatError
from sensors.audit.normalize import normalize
from streams.enrich import Enricher
from streams.rules.condition import MAX_NESTING, Compiler, ConditionError
from streams.rules.functions import FUNCTIONS
from tests.sensors.audit.test_webhook import _event as audit_event
from tests.streams.store.support import event

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
AUDIT_KEYS = [
    "kind", "apiVersion", "auditID", "stage", "verb", "user", "impersonatedUser", "sourceIPs", "userAgent",
    "objectRef", "responseStatus", "requestURI", "requestObject", "responseObject", "stageTimestamp",
    "requestReceivedTimestamp", "timestamp", "annotations", "level",
]  # fmt: skip


@st.composite
def audit_items(draw: st.DrawFn) -> Any:
    """A real audit event with some fields replaced by anything, or anything at all."""
    if draw(st.booleans()):
        return draw(json_values)
    item = audit_event(draw(st.text(min_size=1, max_size=20)))
    for key in draw(st.lists(st.sampled_from(AUDIT_KEYS), max_size=4)):
        item[key] = draw(json_values)
    return item


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@FUZZ
@given(audit_items())
def test_the_audit_normalizer_returns_an_event_or_says_what_is_wrong(item: Any) -> None:
    try:
        ev = normalize(item, cluster="c", node="n")
    except AuditFormatError as exc:
        assert str(exc)
    else:
        assert ev.audit is not None and ev.event_id


@FUZZ
@given(st.lists(audit_items(), max_size=6), st.lists(st.integers(0, 5), max_size=2), st.integers(300, 1500))
def test_a_webhook_batch_accounts_for_every_item_once(
    items: list[Any], deep_at: list[int], depth: int
) -> None:
    raw = [orjson.dumps(i) for i in items]
    for position in deep_at:  # a requestObject nested deeper than any decoder goes
        base = orjson.dumps(audit_event(f"deep-{position}"))
        raw.insert(min(position, len(raw)), base[:-1] + b',"requestObject":' + _deep(depth) + b"}")
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(raw) + b"]}"
    result = process_body(body, cluster="c", node="n")
    assert len(result.events) + len(result.dead) == len(raw)
    assert len(result.errors) == len(result.dead) and all(result.errors)


@FUZZ
@given(st.binary(max_size=2000))
def test_any_webhook_body_is_events_or_dead_letters(body: bytes) -> None:
    result = process_body(body)
    assert len(result.errors) == len(result.dead)
    assert all(r.startswith(("items[", "event", "body")) for r in result.errors)


@st.composite
def record_values(draw: st.DrawFn) -> bytes:
    """A record value of cadr.raw: bytes, a damaged event, a batch of them, or a nesting bomb."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=500))
    if choice == 3:
        depth = draw(st.integers(500, 3000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return opener * depth + b"1" + closer * depth
    events = []
    for n in range(draw(st.integers(1, 3))):
        doc = orjson.loads(encode(event(f"e{n}")))
        for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
            doc[key] = draw(json_values)
        events.append(orjson.dumps(doc))
    return events[0] if choice == 1 else b"[" + b",".join(events) + b"]"


@FUZZ
@given(record_values())
def test_the_event_decoder_returns_events_or_a_record_error(value: bytes) -> None:
    try:
        events = decode_events(value)
    except RecordError as exc:
        assert str(exc)
    else:
        assert all(e.event_id for e in events)


_WORDS = [
    "and", "or", "not", "in", "exists", "startswith", "glob", "pmatch", "contains", "=", "!=", "<", ">=",
    "(", ")", ",", "event.kind", "process.name", "process.args", "file.path", "'x'", '"y"', "1", "shell_binaries",
    "is_shell", "baseline.seen_exec", "workload.namespace", "unknown_word", "'", '"', "\\",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(_WORDS), max_size=30) | st.text(max_size=80).map(lambda t: [t]))
def test_the_condition_parser_compiles_or_says_where_it_fails(words: list[str]) -> None:
    compiler = Compiler(
        {"shell_binaries": ["sh", "bash"]}, {"is_shell": "process.name in (shell_binaries)"}, FUNCTIONS
    )
    try:
        compiler.compile(" ".join(words))
    except ConditionError as exc:
        assert str(exc)
    assert compiler.nesting == 0


# -- what the fuzzing found ---------------------------------------------------------------------------------


def test_a_nesting_bomb_on_raw_is_a_dead_letter_and_its_neighbours_go_on() -> None:
    """Before: RecursionError out of decode_events, and the enrich stage died on the record (at each retry)."""
    enricher = Enricher(cluster="c", max_record_bytes=1 << 20)
    good = encode(event("good-1"))
    result = enricher.process([b"[" * 5000 + b"]" * 5000, _deep(5000), good])
    assert [e.event_id for e in result.decoded] == ["good-1"]
    assert len(result.dead) == 2
    assert all(b"nested too deeply" in value for _, value in result.dead)


def test_deeply_nested_conditions_are_refused_with_a_reason() -> None:
    """Before: RecursionError out of the rule compiler for 1,000 nested parentheses or `not`s."""
    compiler = Compiler({}, {}, FUNCTIONS)
    for text in ("(" * 1000 + 'event.kind = "x"' + ")" * 1000, "not " * 1000 + 'event.kind = "x"'):
        try:
            compiler.compile(text)
        except ConditionError as exc:
            assert f"nested more than {MAX_NESTING} levels" in str(exc)
        else:
            raise AssertionError("a 1,000-deep condition compiled")
    assert compiler.compile("(" * 10 + 'event.kind = "x"' + ")" * 10) is not None
