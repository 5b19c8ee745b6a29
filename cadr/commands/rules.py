"""``cadr rules``: run every rule's cases, list the rules, and generate the rules table of the docs.

``cadr rules test`` is the same check as ``tests/streams/test_rule_cases.py`` (each case through a
detector holding only its rule); ``cadr rules docs`` writes ``docs/rules.md`` from the rule YAML so
the table cannot drift from the rules (``--check`` fails when the file is stale, for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from schemas.errors import CadrError
from schemas.settings import Settings
from streams.rule_cases import CaseResult, run_cases
from streams.rules import Maturity, Rule, RuleSet, load_rules

__all__ = ["DEFAULT_DOCS", "register", "render_docs", "render_results", "rule_summary"]

DEFAULT_DOCS = "docs/rules.md"
DEFAULT_COVERAGE = "docs/coverage.md"

_SOURCE_TITLES = {"ebpf": "eBPF sensor (`ebpf`)", "k8s_audit": "Kubernetes audit log (`k8s_audit`)"}
_SOURCE_ORDER = ["ebpf", "k8s_audit"]


class RulesDocsStaleError(CadrError):
    """``cadr rules docs --check`` found the generated docs out of date."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rules",
        help="test, list and document the detection rules",
        description="Work with the detection rules (built-in rules plus detect.rules_dirs and --rules-dir).",
    )
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")

    def rules_dir(sp: argparse.ArgumentParser, default_text: str) -> None:
        sp.add_argument(
            "--rules-dir",
            action="append",
            default=[],
            metavar="DIR",
            help=f"extra rules folder, repeatable (default: {default_text})",
        )

    t = sub.add_parser(
        "test",
        help="run every rule's must-fire and must-not-fire cases",
        description="Run each case of each rule's cases.yaml through a detector holding only that rule; "
        "exit 1 if any case fails.",
    )
    rules_dir(t, "the built-in rules plus detect.rules_dirs of the config")
    t.add_argument(
        "--rule", action="append", default=[], metavar="ID", help="only this rule, repeatable (default: all)"
    )
    t.add_argument(
        "--failed", action="store_true", help="print only failing cases (default: print every case)"
    )
    t.add_argument("--json", action="store_true", help="print one JSON object per case (default: a table)")
    t.set_defaults(handler=_handle_test)

    ls = sub.add_parser("list", help="list the rules", description="List the loaded rules.")
    rules_dir(ls, "the built-in rules plus detect.rules_dirs of the config")
    ls.add_argument("--json", action="store_true", help="print a JSON array of rules (default: a table)")
    ls.set_defaults(handler=_handle_list)

    d = sub.add_parser(
        "docs",
        help=f"generate the rules table ({DEFAULT_DOCS}) from the rule YAML",
        description="Write the markdown rules reference generated from every rule.yaml.",
    )
    rules_dir(d, "only the built-in rules, so the file is the same on every machine")
    d.add_argument("--output", default=DEFAULT_DOCS, help=f"file to write (default: {DEFAULT_DOCS})")
    d.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be generated (default: write)",
    )
    d.set_defaults(handler=_handle_docs)

    cov = sub.add_parser(
        "coverage",
        help=f"generate the coverage table ({DEFAULT_COVERAGE}) of Falco's and Kubescape's rule sets",
        description="Write the table of which cadr rule covers each rule of Falco's syscall and k8saudit rule "
        "sets and of Kubescape's runtime library, from streams/rules/coverage.yaml and the rule folders.",
    )
    cov.add_argument(
        "--output", default=DEFAULT_COVERAGE, help=f"file to write (default: {DEFAULT_COVERAGE})"
    )
    cov.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be generated (default: write)",
    )
    cov.set_defaults(handler=_handle_coverage)

    imp = sub.add_parser(
        "import-sigma",
        help="convert Sigma rules (Kubernetes audit, Linux process creation) into cadr rule folders",
        description="Convert every Sigma rule under DIR (pySigma) into a cadr rule folder under --output, "
        "ready for detect.rules_dirs or --rules-dir; print which rules imported and why the others did not. "
        "Each rule keeps its author (Sigma's DRL 1.1 requires it with every match).",
    )
    imp.add_argument(
        "directory", metavar="DIR", help="a Sigma rule file, or a folder searched for *.yml/*.yaml"
    )
    imp.add_argument(
        "--output",
        default="sigma-rules",
        help="folder to write the rule folders into (default: ./sigma-rules)",
    )
    imp.add_argument("--json", action="store_true", help="print the report as JSON (default: a table)")
    imp.set_defaults(handler=_handle_import_sigma)
    p.set_defaults(handler=lambda args, settings: (p.print_help(), 2)[1])


# -- test --------------------------------------------------------------------------------------


def render_results(results: Sequence[CaseResult], out: TextIO, *, failed_only: bool = False) -> None:
    """The pass/fail table of ``cadr rules test`` with a summary line."""
    shown = [r for r in results if not (failed_only and r.passed)]
    width = max([len(r.rule_id) for r in shown] + [4])
    out.write(f"{'RESULT':<6}  {'RULE':<{width}}  {'EXPECT':<7}  CASE\n")
    for r in shown:
        expect = r.expected.value if r.expected is not None else "-"
        out.write(f"{'pass' if r.passed else 'FAIL':<6}  {r.rule_id:<{width}}  {expect:<7}  {r.case}\n")
        if not r.passed:
            out.write(f"{'':<6}  {'':<{width}}  {'':<7}  -> {r.message}\n")
    failed = sum(not r.passed for r in results)
    rules = len({r.rule_id for r in results})
    out.write(f"{len(results)} cases of {rules} rules: {len(results) - failed} passed, {failed} failed\n")


def _handle_test(args: argparse.Namespace, settings: Settings) -> int:
    # every rule's cases run, experimental ones too: a rule must work before a site switches it on
    ruleset = load_rules([*settings.detect.rules_dirs, *args.rules_dir], experimental=True)
    results = run_cases(ruleset, args.rule)
    if args.json:
        for r in results:
            if args.failed and r.passed:
                continue
            record = {
                "rule_id": r.rule_id,
                "case": r.case,
                "expected": r.expected.value if r.expected else None,
                "got": r.got.value if r.got else None,
                "passed": r.passed,
                "message": r.message,
            }
            sys.stdout.write(json.dumps(record) + "\n")
    else:
        render_results(results, sys.stdout, failed_only=args.failed)
    return 0 if all(r.passed for r in results) else 1


# -- list --------------------------------------------------------------------------------------


def rule_enabled(rule: Rule, settings: Settings) -> bool:
    """Whether the detect stage loads ``rule`` with these settings."""
    if rule.id in settings.detect.disabled_rules:
        return False
    return rule.maturity is not Maturity.EXPERIMENTAL or settings.detect.experimental_rules


def rule_summary(rule: Rule, enabled: bool = True) -> dict[str, Any]:
    """A rule as plain data (``cadr rules list --json``); ``enabled``: loaded by the detect stage."""
    return {
        "id": rule.id,
        "name": rule.name,
        "severity": rule.severity.value,
        "source": rule.source,
        "kinds": [k.value for k in rule.kinds],
        "mitre": list(rule.mitre),
        "tactic": rule.tactic,
        "needs_baseline": rule.needs_baseline,
        "maturity": rule.maturity.value,
        "enabled": enabled,
        "tags": list(rule.tags),
        "description": rule.description,
        "condition": rule.condition,
        "path": str(rule.path.parent) if rule.path else "",
    }


def _handle_list(args: argparse.Namespace, settings: Settings) -> int:
    ruleset = load_rules([*settings.detect.rules_dirs, *args.rules_dir], experimental=True)
    rules = sorted(ruleset.rules, key=lambda r: r.id)
    if args.json:
        listed = [rule_summary(r, rule_enabled(r, settings)) for r in rules]
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        return 0
    width = max([len(r.id) for r in rules] + [2])
    sys.stdout.write(
        f"{'ID':<{width}}  {'SEVERITY':<8}  {'SOURCE':<9}  {'MATURITY':<12}  {'LOADED':<6}  {'MITRE':<20}  NAME\n"
    )
    for r in rules:
        mitre = ",".join(r.mitre)
        loaded = "yes" if rule_enabled(r, settings) else "no"
        sys.stdout.write(
            f"{r.id:<{width}}  {r.severity.value:<8}  {r.source:<9}  {r.maturity.value:<12}  {loaded:<6}  "
            f"{mitre:<20}  {r.name}\n"
        )
    off = sum(r.maturity is Maturity.EXPERIMENTAL for r in rules)
    if off and not settings.detect.experimental_rules:
        sys.stdout.write(f"{off} experimental rules are not loaded (set detect.experimental_rules = true)\n")
    return 0


# -- docs --------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mitre_link(technique: str) -> str:
    path = technique.replace(".", "/")
    return f"[{technique}](https://attack.mitre.org/techniques/{path}/)"


def _anchor(rule: Rule) -> str:
    return rule.id.lower()


def _source_key(source: str) -> tuple[int, str]:
    return (_SOURCE_ORDER.index(source) if source in _SOURCE_ORDER else len(_SOURCE_ORDER), source)


def render_docs(ruleset: RuleSet) -> str:
    """The markdown rules reference: one table per source, then each rule's details."""
    rules = sorted(ruleset.rules, key=lambda r: (_source_key(r.source), r.id))
    sources = sorted({r.source for r in rules}, key=_source_key)
    counts = ", ".join(f"{sum(r.source == s for r in rules)} from `{s}`" for s in sources)
    lines = [
        "<!-- Generated by `cadr rules docs` from every rule.yaml; do not edit by hand. -->",
        "# Detection rules",
        "",
        f"{len(rules)} rules ({counts}). Each rule is a folder `streams/rules/<source>/<ID>-<slug>/`",
        "holding its `rule.yaml` and the `cases.yaml` events it must and must not fire on; `cadr rules test`",
        "runs every case. The format and the condition language are described in `streams/rules/FORMAT.md`;",
        "shared lists and macros live in `streams/rules/macros.yaml`.",
        "",
    ]
    for source in sources:
        lines += [
            f"## {_SOURCE_TITLES.get(source, f'`{source}`')}",
            "",
            "| ID | Rule | Severity | MITRE ATT&CK | Tactic | Baseline | Maturity |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rules if r.source == source):
            lines.append(
                f"| [{r.id}](#{_anchor(r)}) | {_cell(r.name)} | {r.severity.value} | "
                f"{', '.join(_mitre_link(m) for m in r.mitre)} | {_cell(r.tactic)} | "
                f"{'yes' if r.needs_baseline else 'no'} | {r.maturity.value} |"
            )
        lines.append("")
    lines += ["## Rule details", ""]
    for r in rules:
        lines += [f'<a id="{_anchor(r)}"></a>', f"### {r.id}: {r.name}", "", r.description, ""]
        techniques = ", ".join(_mitre_link(m) for m in r.mitre)
        lines.append(f"- **Severity:** {r.severity.value}; **MITRE ATT&CK:** {techniques}")
        lines.append(f"- **Event kinds:** {', '.join(k.value for k in r.kinds)} (source `{r.source}`)")
        lines.append(f"- **Condition:** `{r.condition}`")
        lines.append(f"- **Output:** `{r.output}`")
        if r.story:
            lines.append(f"- **In the story:** {r.story}")
        lines.append(f"- **Dedup key:** {', '.join(f'`{d}`' for d in r.dedup)}")
        if r.false_positives:
            lines.append("- **Known false positives:** " + "; ".join(r.false_positives))
        if r.tags:
            lines.append(f"- **Tags:** {', '.join(f'`{t}`' for t in r.tags)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _handle_docs(args: argparse.Namespace, settings: Settings) -> int:
    # The docs describe the project's rules: the config's extra folders are not read, so the
    # generated file is the same wherever it is generated.
    text = render_docs(load_rules(args.rules_dir, experimental=True))
    path = Path(args.output)
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            raise RulesDocsStaleError(f"{path} is out of date with the rule YAML: run `cadr rules docs`")
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


# -- coverage ----------------------------------------------------------------------------------


def coverage_text() -> str:
    """docs/coverage.md as it must be (built-in rules, every maturity)."""
    from streams.rules.coverage import load_coverage, render_coverage

    ruleset = load_rules(experimental=True)
    return render_coverage(ruleset, load_coverage(ruleset))


def _handle_coverage(args: argparse.Namespace, settings: Settings) -> int:
    text = coverage_text()
    path = Path(args.output)
    if args.check:
        if (path.read_text() if path.exists() else "") != text:
            raise RulesDocsStaleError(
                f"{path} is out of date with streams/rules/coverage.yaml: run `cadr rules coverage`"
            )
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


# -- import-sigma ------------------------------------------------------------------------------


def _handle_import_sigma(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.text import escape_controls as _safe
    from streams.rules.sigma import import_sigma_dir, write_rule_folder

    result = import_sigma_dir(args.directory)
    written = [write_rule_folder(draft, args.output) for draft in result.drafts]
    # the written folders must load as they are: a rule that does not compile is an import bug, not a surprise
    load_rules([args.output], experimental=True)
    total = len(result.drafts) + len(result.failures)
    if args.json:
        report = {
            "imported": [
                {"id": d.data["id"], "sigma_id": d.sigma_id, "title": d.title} for d in result.drafts
            ],
            "not_imported": [{"file": f, "reason": e.reason, "detail": e.detail} for f, e in result.failures],
            "reasons": result.reasons(),
        }
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    print(
        f"{len(result.drafts)} of {total} Sigma rules imported into {args.output} ({len(written)} rule folders)"
    )
    if result.failures:
        width = max(len(r) for r in result.reasons())
        print(f"\n{'NOT IMPORTED BECAUSE':<{width}}  RULES")
        for reason, count in result.reasons().items():
            print(f"{_safe(reason):<{width}}  {count}")
        print()
        for path, err in result.failures:
            print(f"  {_safe(Path(path).name)}: {_safe(str(err))}")
    return 0
