"""Sigma rules (pySigma) as cadr rules: Kubernetes audit logs and Linux process creation.

pySigma parses a rule and applies its value modifiers (``contains``, ``startswith``, ``all``, ``re``, ``cidr``
...); the condition tree it yields is written here as a cadr condition, field by field through
:data:`FIELD_MAPS`. Sigma string matching is case-insensitive with ``*``/``?`` wildcards: it becomes
``text.imatch_any`` (linear-time wildcards, :mod:`schemas.glob`'s sigma syntax); ``|cased`` becomes
``text.match_any``; ``|re`` becomes ``text.regex_any`` (RE2, linear time, the engine ClickHouse's ``match``
uses too, so the retro-hunt's SQL means the same). The SQL side follows from the condition
(:mod:`streams.forensics.rule_sql`).

A rule that cannot be imported raises :class:`SigmaImportError` whose ``reason`` is one short category
(an unsupported log source, a field cadr does not record, a regex RE2 refuses ...) for the import report.

The Detection Rule License (DRL 1.1) of SigmaHQ's rules requires the author to be shown wherever a match is
shown: the cadr rule keeps ``author`` and ``license``, and its output sentence ends with
``[Sigma: <title> by <author>, DRL 1.1]``, so every alert, story line and forwarded record names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import CadrError
from streams.rules.model import ATTACK_TACTICS

__all__ = [
    "FIELD_MAPS",
    "SigmaImport",
    "SigmaImportError",
    "SigmaRuleDraft",
    "import_sigma_dir",
    "sigma_rule_id",
    "sigma_to_rule",
    "write_rule_folder",
]

#: Sigma field -> (cadr field, kind); kind "str" | "int" | "decision" (see _decision)
FIELD_MAPS: dict[str, dict[str, tuple[str, str]]] = {
    "process_creation": {
        "Image": ("process.exe", "str"),
        "CommandLine": ("process.cmdline", "str"),
        "ParentImage": ("process.parent_exe", "str"),
        "CurrentDirectory": ("process.cwd", "str"),
        "ProcessId": ("process.pid", "int"),
        "ParentProcessId": ("process.ppid", "int"),
    },
    "k8s_audit": {
        "verb": ("audit.verb", "str"),
        "objectRef.resource": ("audit.resource", "str"),
        "objectRef.subresource": ("audit.subresource", "str"),
        "objectRef.namespace": ("audit.namespace", "str"),
        "objectRef.name": ("audit.name", "str"),
        "objectRef.apiGroup": ("audit.api_group", "str"),
        "apiGroup": ("audit.api_group", "str"),
        "objectRef.apiVersion": ("audit.api_version", "str"),
        "user.username": ("audit.user", "str"),
        "user.groups": ("audit.groups", "str"),
        "impersonatedUser.username": ("audit.impersonated_user", "str"),
        "sourceIPs": ("audit.source_ips", "str"),
        "userAgent": ("audit.user_agent", "str"),
        "requestURI": ("audit.request_uri", "str"),
        "stage": ("audit.stage", "str"),
        "responseStatus.code": ("audit.response_code", "int"),
        "annotations.authorization.k8s.io/decision": ("audit.decision", "str"),
        # not audit fields but what SigmaHQ's rules call the pod spec's host paths and added capabilities
        "hostPath": ("audit.request.host_paths", "str"),
        "capabilities": ("audit.request.capabilities_add", "str"),
    },
}

#: fields SigmaHQ's Linux rules use that cadr's events do not carry, with why
_UNRECORDED = {
    "ParentCommandLine": "the parent's command line is not on the exec event",
    "User": "user names are not recorded (uids are)",
    "LogonId": "Linux has no logon session id",
}

_SEVERITY = {
    "informational": "info",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}
_TECHNIQUE = re.compile(r"^t\d{4}(\.\d{3})?$")


class SigmaImportError(CadrError):
    """A Sigma rule cannot become a cadr rule; ``reason`` is a short category for reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class SigmaRuleDraft:
    """A converted rule: ``data`` is a ``rule.yaml`` mapping (load it with ``Rule.from_dict``)."""

    data: dict[str, Any]
    sigma_id: str
    title: str
    source_file: str = ""


def sigma_rule_id(sigma_id: str) -> str:
    """The cadr id of an imported Sigma rule: ``CADR-SIGMA-`` and the first 8 hex digits of its UUID."""
    digits = sigma_id.replace("-", "").lower()[:8]
    if not re.fullmatch(r"[0-9a-f]{8}", digits):
        raise SigmaImportError("no rule id", f"Sigma id {sigma_id!r} is not a UUID")
    return f"CADR-SIGMA-{digits}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _logsource(rule: Any) -> str:
    ls = rule.logsource
    if ls.product == "linux" and ls.category == "process_creation":
        return "process_creation"
    if ls.product == "kubernetes" and ls.service == "audit":
        return "k8s_audit"
    raise SigmaImportError(
        "unsupported log source", f"category={ls.category} product={ls.product} service={ls.service}"
    )


def _wild(value: Any) -> str:
    """A SigmaString as a wildcard pattern in schemas.glob's sigma syntax (``*``, ``?``, ``\\`` escapes)."""
    from sigma.types import SpecialChars

    out: list[str] = []
    for part in value.s:
        if part == SpecialChars.WILDCARD_MULTI:
            out.append("*")
        elif part == SpecialChars.WILDCARD_SINGLE:
            out.append("?")
        elif isinstance(part, str):
            out.append(part.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?"))
        else:
            raise SigmaImportError("unsupported value", f"placeholder {part!r}")
    return "".join(out)


class _Writer:
    def __init__(self, source: str) -> None:
        self.source = source
        self.fields = FIELD_MAPS[source]

    def field(self, name: str | None) -> tuple[str, str]:
        if name is None:
            raise SigmaImportError("keyword search", "a value without a field")
        if name in self.fields:
            return self.fields[name]
        if name in _UNRECORDED:
            raise SigmaImportError(f"field not recorded: {name}", _UNRECORDED[name])
        raise SigmaImportError(f"unknown field: {name}")

    def node(self, n: Any) -> str:
        from sigma import conditions as c

        if isinstance(n, c.ConditionAND):
            return "(" + " and ".join(self.node(a) for a in n.args) + ")"
        if isinstance(n, c.ConditionOR):
            return "(" + " or ".join(self.node(a) for a in n.args) + ")"
        if isinstance(n, c.ConditionNOT):
            return "not " + self.node(n.args[0])
        if isinstance(n, c.ConditionFieldEqualsValueExpression):
            return self.compare(n.field, n.value)
        if isinstance(n, c.ConditionValueExpression):
            raise SigmaImportError("keyword search", "a value without a field")
        raise SigmaImportError("unsupported condition", type(n).__name__)

    def compare(self, sigma_field: str, value: Any) -> str:
        from sigma import types as t

        if (
            sigma_field == "responseStatus.code"
            and isinstance(value, t.SigmaString)
            and not value.contains_special()
        ):
            return self.decision(str(value))
        field, kind = self.field(sigma_field)
        if isinstance(value, t.SigmaExpansion):
            return "(" + " or ".join(self.compare(sigma_field, v) for v in value.values) + ")"
        if isinstance(value, t.SigmaNull):
            return f"not {field} exists"
        if isinstance(value, t.SigmaExists):
            return f"{field} exists" if value.exists else f"not {field} exists"
        if isinstance(value, t.SigmaBool):
            return f"{field} = {'true' if value.boolean else 'false'}"
        if isinstance(value, t.SigmaNumber):
            if kind == "int":
                return f"{field} = {value.number}"
            return f"text.imatch_any({field}, ({_quote(str(value.number))}))"
        if isinstance(value, t.SigmaCIDRExpression):
            cidrs = ", ".join(_quote(str(n)) for n in value.network)
            return f"net.in({field}, ({cidrs}))"
        if isinstance(value, t.SigmaRegularExpression):
            return f"text.regex_any({field}, ({_quote(self.regex(value))}))"
        if isinstance(value, t.SigmaString):
            if kind == "int":
                text = str(value)
                if not text.isdigit():
                    raise SigmaImportError("value does not fit the field", f"{sigma_field}: {text!r}")
                return f"{field} = {text}"
            function = "text.match_any" if isinstance(value, t.SigmaCasedString) else "text.imatch_any"
            return f"{function}({field}, ({_quote(_wild(value))}))"
        raise SigmaImportError("unsupported value", type(value).__name__)

    def decision(self, text: str) -> str:
        """``responseStatus.code: ALLOW`` (SigmaHQ's enumeration rule) means the authorization decision: the
        code is a number, so a word there can only mean ``authorization.k8s.io/decision``."""
        if text.isdigit():
            return f"audit.response_code = {text}"
        return f"text.imatch_any(audit.decision, ({_quote(text)}))"

    @staticmethod
    def regex(value: Any) -> str:
        import re2
        from sigma.types import SigmaRegularExpressionFlag as F

        pattern = getattr(value.regexp, "original", None) or str(value.regexp)
        flags = "".join(
            ch
            for flag, ch in ((F.IGNORECASE, "i"), (F.MULTILINE, "m"), (F.DOTALL, "s"))
            if flag in value.flags
        )
        if flags:
            pattern = f"(?{flags}){pattern}"
        try:
            re2.compile(pattern)
        except Exception as exc:  # re2.error and friends
            raise SigmaImportError(
                "regex needs backtracking (RE2 refuses it)", f"{value.regexp!r}: {exc}"
            ) from exc
        return pattern


def _attack(tags: list[Any]) -> tuple[list[str], str]:
    techniques: list[str] = []
    tactic = ""
    for tag in tags:
        if tag.namespace != "attack":
            continue
        name = str(tag.name).lower()
        if _TECHNIQUE.match(name):
            techniques.append(name.upper())
        elif name in ATTACK_TACTICS and not tactic:
            tactic = name
    return techniques, tactic


def _clean(text: Any) -> str:
    """Text for a rule.yaml field: one line, no template braces."""
    return " ".join(str(text or "").replace("{", "(").replace("}", ")").split())


def sigma_to_rule(text: str, source_file: str = "") -> SigmaRuleDraft:
    """Convert one Sigma rule (YAML text) into a cadr rule mapping; raises :class:`SigmaImportError`."""
    from sigma.exceptions import SigmaError
    from sigma.rule import SigmaRule

    try:
        rule = SigmaRule.from_yaml(text)
        trees = [cond.parse() for cond in rule.detection.parsed_condition]
    except SigmaError as exc:
        raise SigmaImportError("not a valid Sigma rule", str(exc)) from exc
    if rule.id is None:
        raise SigmaImportError("no rule id", "the rule has no id")
    source = _logsource(rule)
    writer = _Writer(source)
    if len(trees) != 1:
        raise SigmaImportError("unsupported condition", "more than one condition")
    body = writer.node(trees[0])
    author = _clean(rule.author) or "unknown author"
    title = _clean(rule.title)
    techniques, tactic = _attack(list(rule.tags or []))
    attribution = f"[Sigma: {title} by {author}, DRL 1.1]"
    if source == "process_creation":
        condition = f"spawned_process and {body}"
        output = f"{{process.cmdline}} in {{workload.label}} (exe {{process.exe}}, parent {{process.parent_exe}}) {attribution}"
        data_source, kinds = "ebpf", ["process_exec"]
        dedup = ["workload.key", "process.cmdline"]
        story = f"ran a command matching Sigma's {title} ({{process.cmdline_short}})"
    else:
        # one hit per request: the completed stage (an API server may log several stages of one call)
        condition = f"k8s_api and audit.stage = ResponseComplete and {body}"
        output = (
            f"{{audit.user}} {{audit.verb}} {{audit.resource}} {{audit.subresource}} {{audit.namespace}}/{{audit.name}} "
            f"(response {{audit.response_code}}, from {{audit.source_ips}}) {attribution}"
        )
        data_source, kinds = "k8s_audit", ["k8s_api"]
        dedup = ["audit.user", "audit.verb", "audit.resource", "audit.namespace", "audit.name"]
        story = f"did what Sigma's {title} looks for ({{audit.verb}} {{audit.resource}})"
    level = rule.level.name.lower() if rule.level is not None else "medium"
    sigma_id = str(rule.id)
    data = {
        "id": sigma_rule_id(sigma_id),
        "name": title,
        "description": _clean(rule.description) or title,
        "severity": _SEVERITY.get(level, "medium"),
        "mitre": techniques,
        "tactic": tactic,
        "source": data_source,
        "kinds": kinds,
        "needs_baseline": False,
        # imported on purpose, so loaded: Sigma's own status (test, stable ...) is kept as a tag
        "maturity": "stable",
        "condition": condition,
        "output": output,
        "dedup": dedup,
        "false_positives": [_clean(f) for f in (rule.falsepositives or [])],
        "tags": ["sigma", f"sigma-status-{str(rule.status.name if rule.status else 'unknown').lower()}"],
        "story": story,
        "author": author,
        "license": "DRL-1.1",
        "origin": f"sigma:{sigma_id}",
    }
    return SigmaRuleDraft(data=data, sigma_id=sigma_id, title=title, source_file=source_file)


@dataclass
class SigmaImport:
    """The result of importing a folder: rules that converted, and why each other one did not."""

    drafts: list[SigmaRuleDraft] = field(default_factory=list)
    failures: list[tuple[str, SigmaImportError]] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        """Failure count per reason, most common first."""
        counts: dict[str, int] = {}
        for _, err in self.failures:
            counts[err.reason] = counts.get(err.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def import_sigma_dir(directory: str | Path) -> SigmaImport:
    """Convert every ``*.yml``/``*.yaml`` Sigma rule under ``directory`` (sorted, recursive)."""
    root = Path(directory)
    if not root.exists():
        raise SigmaImportError("no such file or directory", str(root))
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml"))
    result = SigmaImport()
    seen: dict[str, str] = {}
    for path in files:
        try:
            draft = sigma_to_rule(path.read_text(encoding="utf-8", errors="replace"), str(path))
        except SigmaImportError as exc:
            result.failures.append((str(path), exc))
            continue
        cadr_id = draft.data["id"]
        if cadr_id in seen:
            result.failures.append(
                (str(path), SigmaImportError("id collision", f"{cadr_id} is also {seen[cadr_id]}"))
            )
            continue
        seen[cadr_id] = str(path)
        result.drafts.append(draft)
    return result


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "rule"


def write_rule_folder(draft: SigmaRuleDraft, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<source>/<id>-<slug>/rule.yaml`` (a loadable rule folder) and return the folder."""
    import yaml

    folder = Path(out_dir) / draft.data["source"] / f"{draft.data['id']}-{_slug(draft.title)}"
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Imported by `cadr rules import-sigma` from {Path(draft.source_file).name or 'a Sigma rule'}\n"
        f"# (Sigma id {draft.sigma_id}). Author: {draft.data['author']}. Licence: Detection Rule License 1.1,\n"
        "# which requires the author to be named wherever this rule or a match of it is shown.\n"
    )
    text = yaml.safe_dump(draft.data, sort_keys=False, allow_unicode=True, width=110)
    (folder / "rule.yaml").write_text(header + text, encoding="utf-8")
    return folder
