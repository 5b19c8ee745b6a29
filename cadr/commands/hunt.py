"""``cadr hunt``: run one rule (cadr's or a Sigma rule) over the stored events and print the hits as alerts.

The rule's condition becomes ClickHouse SQL over the event store (``streams.forensics.hunt``); nothing is
replayed through Kafka. ``--stories`` correlates the hits into incident stories as ``cadr scan --stories``
does; ``--show-sql`` prints the SQL (and whether it is the whole answer or a superset the rule re-checks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from cadr.commands.scan import _print_stories, _print_text
from schemas.codec import encode
from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.text import escape_controls
from streams.rules import Rule, RuleSet, load_rules

__all__ = ["register", "resolve_rule"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hunt",
        help="retro-hunt: run one rule (cadr or Sigma) over the stored events and print the hits as alerts",
        description="Run one detection rule over the events stored in ClickHouse in a time range, as SQL "
        "generated from its condition, and print the hits as the alerts the live pipeline would raise.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--rule", metavar="ID", help="a loaded rule's id (built-in, detect.rules_dirs, --rules-dir)"
    )
    which.add_argument(
        "--sigma", metavar="FILE", help="a Sigma rule file (converted as rules import-sigma does)"
    )
    p.add_argument(
        "--since",
        default="30d",
        help="start of the range: a duration back from now (30d, 12h) "
        "or a time (ISO 8601, epoch) (default: 30d)",
    )
    p.add_argument("--until", default="now", help="end of the range (default: now)")
    p.add_argument(
        "--rules-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="extra rules folder, repeatable (default: none)",
    )
    p.add_argument("--json", action="store_true", help="print Alert records as JSON lines (default: text)")
    p.add_argument(
        "--stories", action="store_true", help="also correlate the hits into stories (default: off)"
    )
    p.add_argument("--show-sql", action="store_true", help="print the generated SQL on stderr (default: off)")
    p.set_defaults(handler=_run)


def _time(text: str) -> int:
    from streams.forensics.named import parse_time_ns

    value = text.strip()
    if value and value[0].isdigit() and value[-1] in "smhdw" and value[:-1].replace(".", "").isdigit():
        value = "-" + value  # "30d": thirty days back
    return parse_time_ns(value)


def resolve_rule(args: argparse.Namespace, settings: Settings) -> tuple[RuleSet, Rule]:
    """The rule to hunt with the rule set whose lists and macros compile it."""
    ruleset = load_rules(
        [*settings.detect.rules_dirs, *args.rules_dir],
        experimental=True,
        disabled=settings.detect.disabled_rules,
    )
    if args.rule:
        try:
            return ruleset, ruleset.get(args.rule)
        except KeyError:
            raise CadrError(f"no such rule: {args.rule}") from None
    from pathlib import Path

    from streams.rules.model import Rule as RuleModel
    from streams.rules.sigma import sigma_to_rule

    path = Path(args.sigma)
    if not path.is_file():
        raise CadrError(f"no Sigma rule file {path}")
    draft = sigma_to_rule(path.read_text(encoding="utf-8", errors="replace"), str(path))
    rule = RuleModel.from_dict(draft.data, str(path))
    assert ruleset.compiler is not None
    rule.compile(ruleset.compiler)
    return ruleset, rule


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.forensics.hunt import hunt
    from streams.forensics.reader import open_reader

    ruleset, rule = resolve_rule(args, settings)
    since, until = _time(args.since), _time(args.until)
    if since >= until:
        raise CadrError(f"--since ({args.since}) is not before --until ({args.until})")
    started = time.monotonic()
    with open_reader(settings) as reader:
        result = hunt(
            reader,
            ruleset,
            rule,
            since,
            until,
            database=settings.store.database,
            cooldown_s=settings.detect.cooldown_s,
        )
    elapsed = time.monotonic() - started
    cond = result.plan.condition
    if args.show_sql:
        kind = (
            "exact"
            if cond.exact
            else f"a superset (no SQL form for {', '.join(cond.approximated)}; the rule re-checks)"
        )
        sql = escape_controls(
            result.plan.sql, keep="\n"
        )  # the rule's own text: an imported rule is input too
        sys.stderr.write(f"-- SQL ({kind}), since/until in ns:\n{sql}\n")
    if args.stories:
        return _print_stories(result.alerts, settings, as_json=args.json, fail_on=None)
    if args.json:
        for a in result.alerts:
            sys.stdout.buffer.write(encode(a) + b"\n")
        sys.stdout.flush()
    else:
        _print_text(result.alerts, sys.stdout)
    if cond.exact and result.matched != result.selected - result.undecodable:
        sys.stderr.write(
            f"warning: the SQL selected {result.selected} events but the rule matched {result.matched} "
            "(the SQL translation and the rule disagree: please report it)\n"
        )
    by_rule = Counter(a.rule_id for a in result.alerts)
    sys.stderr.write(
        f"hunted {rule.id} over {reader.route}: {result.selected} events selected by SQL "
        f"({'exact' if cond.exact else 'superset'}), {result.matched} matched, {result.undecodable} unreadable, "
        f"{sum(by_rule.values())} alerts in {elapsed:.2f}s\n"
    )
    return 0
