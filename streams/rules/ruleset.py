"""Loading rule folders into a :class:`RuleSet` and evaluating events against it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from schemas.records import Event, EventKind
from streams.rules.condition import Compiler, ConditionError, Predicate
from streams.rules.functions import FUNCTIONS, EvalContext
from streams.rules.model import Match, Maturity, Rule, RuleError

__all__ = ["BUILTIN_DIR", "AllowEntry", "RuleSet", "load_rules"]

BUILTIN_DIR = Path(__file__).parent


@dataclass
class AllowEntry:
    """A tuning hook: matches of ``rule`` (or ``*``) where ``when`` holds are suppressed."""

    rule: str
    when: str
    reason: str = ""
    predicate: Predicate = field(default=lambda ctx: True, repr=False)


@dataclass
class RuleSet:
    """Compiled rules indexed by event kind, plus the allow-list."""

    rules: list[Rule]
    allow: list[AllowEntry] = field(default_factory=list)
    compiler: Compiler | None = None
    by_kind: dict[EventKind, list[Rule]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        index: dict[EventKind, list[Rule]] = defaultdict(list)
        for rule in self.rules:
            for kind in rule.kinds:
                index[kind].append(rule)
        self.by_kind = dict(index)

    def get(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    @property
    def needs_baseline(self) -> bool:
        return any(r.needs_baseline for r in self.rules)

    def evaluate(self, event: Event, ctx: EvalContext | None = None) -> list[Match]:
        """Every rule that fires on ``event`` and is not allow-listed."""
        candidates = self.by_kind.get(event.kind)
        if not candidates:
            return []
        ctx = ctx or EvalContext(event=event)
        matches: list[Match] = []
        for rule in candidates:
            if not rule.predicate(ctx):
                continue
            if any((a.rule in ("*", rule.id)) and a.predicate(ctx) for a in self.allow):
                continue
            matches.append(
                Match(
                    rule=rule,
                    message=rule.render(ctx),
                    dedup_key=rule.dedup_key(ctx),
                    story=rule.render_story(ctx),
                )
            )
        return matches


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: invalid YAML: {exc}") from exc


def _rule_dirs(root: Path) -> Iterable[Path]:
    return sorted(p.parent for p in root.rglob("rule.yaml"))


def load_rules(
    extra_dirs: Sequence[str | Path] = (),
    *,
    include_builtin: bool = True,
    disabled: Sequence[str] = (),
    allow: Sequence[dict[str, Any]] = (),
    sources: Sequence[str] = (),
    experimental: bool = False,
) -> RuleSet:
    """Load and compile every rule folder (built-in plus ``extra_dirs``).

    ``sources`` keeps only rules of those sources (``ebpf``, ``k8s_audit``); ``allow`` is a list
    of ``{rule, when, reason}`` tuning entries. Rules of maturity ``experimental`` are skipped unless
    ``experimental`` is true (the ``detect.experimental_rules`` setting): their defaults are not yet
    trusted to stay quiet on a real cluster. Raises :class:`RuleError` naming the file.
    """
    roots = ([BUILTIN_DIR] if include_builtin else []) + [Path(d) for d in extra_dirs]
    lists: dict[str, list[Any]] = {}
    macros: dict[str, str] = {}
    for root in roots:
        if not root.is_dir():
            raise RuleError(f"rules directory {root} does not exist")
        macro_file = root / "macros.yaml"
        if macro_file.exists():
            data = _read_yaml(macro_file) or {}
            lists.update({str(k): list(v) for k, v in (data.get("lists") or {}).items()})
            macros.update({str(k): " ".join(str(v).split()) for k, v in (data.get("macros") or {}).items()})
    compiler = Compiler(lists, macros, FUNCTIONS)
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for root in roots:
        for folder in _rule_dirs(root):
            path = folder / "rule.yaml"
            rule = Rule.from_dict(_read_yaml(path), str(path))
            rule.path = path
            if rule.id in seen:
                raise RuleError(f"{path}: id {rule.id} already used by {seen[rule.id]}")
            seen[rule.id] = path
            if rule.id in disabled or (sources and rule.source not in sources):
                continue
            if rule.maturity is Maturity.EXPERIMENTAL and not experimental:
                continue
            rule.compile(compiler)
            rules.append(rule)
    entries = []
    for i, raw in enumerate(allow):
        entry = AllowEntry(
            rule=str(raw.get("rule", "*")), when=str(raw["when"]), reason=str(raw.get("reason", ""))
        )
        try:
            entry.predicate = compiler.compile(entry.when)
        except ConditionError as exc:
            raise RuleError(f"allow entry {i} ({entry.rule}): {exc}") from exc
        entries.append(entry)
    return RuleSet(rules=rules, allow=entries, compiler=compiler)
