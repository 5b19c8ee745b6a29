"""Typed rules: the YAML of one rule folder, validated and compiled."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import CadrError
from schemas.records import EventKind, Severity
from streams.rules.condition import Compiler, ConditionError, Predicate, ValueFn
from streams.rules.functions import EvalContext

__all__ = ["ATTACK_TACTICS", "Match", "Maturity", "Rule", "RuleError"]

# CADR-<GROUP>-<4 digits>; rules imported from Sigma are CADR-SIGMA-<first 8 hex digits of the Sigma UUID>
_ID = re.compile(r"^(CADR-[A-Z0-9]+-\d{4}|CADR-SIGMA-[0-9a-f]{8})$")
#: ATT&CK tactic short names (a rule's ``tactic``)
ATTACK_TACTICS = frozenset(
    {
        "reconnaissance",
        "resource-development",
        "initial-access",
        "execution",
        "persistence",
        "privilege-escalation",
        "defense-evasion",
        "credential-access",
        "discovery",
        "lateral-movement",
        "collection",
        "command-and-control",
        "exfiltration",
        "impact",
    }
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


class RuleError(CadrError):
    """A rule file is invalid; the message names the file and the field."""


class Maturity(enum.StrEnum):
    EXPERIMENTAL = "experimental"
    STABLE = "stable"


@dataclass
class Rule:
    """One detection rule, loaded from ``rule.yaml`` and compiled."""

    id: str
    name: str
    description: str
    severity: Severity
    mitre: list[str]
    tactic: str
    source: str
    kinds: list[EventKind]
    condition: str
    output: str
    dedup: list[str]
    needs_baseline: bool = False
    maturity: Maturity = Maturity.STABLE
    false_positives: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    #: a verb phrase for the incident summary ("started a shell", "read {file.path}")
    story: str = ""
    #: where the rule comes from when not written here (``sigma:<uuid>``), its author and licence: a licence
    #: such as Sigma's DRL 1.1 requires the author to be shown with every match (see Alert.rule_author)
    origin: str = ""
    author: str = ""
    license: str = ""
    path: Path | None = None
    predicate: Predicate = field(default=lambda ctx: False, repr=False)
    _render: list[tuple[str, ValueFn | None]] = field(default_factory=list, repr=False)
    _dedup_fns: list[ValueFn] = field(default_factory=list, repr=False)
    _story: list[tuple[str, ValueFn | None]] = field(default_factory=list, repr=False)

    REQUIRED = ("id", "name", "description", "severity", "mitre", "source", "kinds", "condition", "output")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Rule:
        if not isinstance(data, dict):
            raise RuleError(f"{where}: a rule must be a mapping")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise RuleError(f"{where}: missing {', '.join(missing)}")
        known = set(cls.__dataclass_fields__) - {"path", "predicate", "_render", "_dedup_fns", "_story"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RuleError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if not _ID.match(str(data["id"])):
            raise RuleError(
                f"{where}: id {data['id']!r} must look like CADR-<GROUP>-<4 digits> (or CADR-SIGMA-<8 hex digits>)"
            )
        try:
            severity = Severity(data["severity"])
            maturity = Maturity(data.get("maturity", "stable"))
            kinds = [EventKind(k) for k in _as_list(data["kinds"])]
        except ValueError as exc:
            raise RuleError(f"{where}: {exc}") from exc
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            description=str(data["description"]).strip(),
            severity=severity,
            mitre=[str(m) for m in _as_list(data["mitre"])],
            tactic=str(data.get("tactic", "")),
            source=str(data["source"]),
            kinds=kinds,
            condition=" ".join(str(data["condition"]).split()),
            output=str(data["output"]).strip(),
            dedup=[str(d) for d in _as_list(data.get("dedup", ["workload.key"]))],
            needs_baseline=bool(data.get("needs_baseline", False)),
            maturity=maturity,
            false_positives=[str(x) for x in _as_list(data.get("false_positives", []))],
            tags=[str(x) for x in _as_list(data.get("tags", []))],
            story=str(data.get("story", "")).strip(),
            origin=str(data.get("origin", "")),
            author=str(data.get("author", "")),
            license=str(data.get("license", "")),
        )

    def compile(self, compiler: Compiler) -> None:
        """Compile condition, output placeholders and dedup fields (fails on unknown names)."""
        where = str(self.path or self.id)
        try:
            self.predicate = compiler.compile(self.condition)
            self._render = _template(self.output, compiler)
            self._story = _template(self.story or self.name[:1].lower() + self.name[1:], compiler)
            self._dedup_fns = [compiler.compile_value(d) for d in self.dedup]
        except ConditionError as exc:
            raise RuleError(f"{where}: {exc}") from exc

    def render(self, ctx: EvalContext) -> str:
        """The rule's output sentence for this event."""
        return _fill(self._render, ctx)

    def render_story(self, ctx: EvalContext) -> str:
        """The rule's verb phrase for the incident summary."""
        return _fill(self._story, ctx)

    def dedup_key(self, ctx: EvalContext) -> str:
        """A short stable key: same rule + same dedup field values = same cause."""
        values = [str(fn(ctx)) for fn in self._dedup_fns]
        digest = hashlib.blake2b("\x1f".join([self.id, *values]).encode(), digest_size=12).hexdigest()
        return digest


def _template(text: str, compiler: Compiler) -> list[tuple[str, ValueFn | None]]:
    parts: list[tuple[str, ValueFn | None]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append((text[pos : m.start()], None))
        parts.append(("", compiler.compile_value(m.group(1))))
        pos = m.end()
    parts.append((text[pos:], None))
    return parts


def _fill(template: list[tuple[str, ValueFn | None]], ctx: EvalContext) -> str:
    parts = []
    for text, fn in template:
        parts.append(text)
        if fn is not None:
            value = fn(ctx)
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            parts.append("<none>" if value in (None, "") else str(value))
    return "".join(parts)


@dataclass
class Match:
    """A rule that fired on an event."""

    rule: Rule
    message: str
    dedup_key: str
    story: str = ""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# re-exported for type checkers
RenderFn = Callable[[EvalContext], str]
