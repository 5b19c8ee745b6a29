"""Detection rules as data: one folder per rule (``rule.yaml`` + ``cases.yaml``).

See FORMAT.md for the rule format and the condition language.
"""

from streams.rules.condition import ConditionError
from streams.rules.functions import BaselineView, DetectState, EvalContext
from streams.rules.model import Match, Maturity, Rule, RuleError
from streams.rules.ruleset import BUILTIN_DIR, AllowEntry, RuleSet, load_rules

__all__ = [
    "BUILTIN_DIR",
    "AllowEntry",
    "BaselineView",
    "ConditionError",
    "DetectState",
    "EvalContext",
    "Match",
    "Maturity",
    "Rule",
    "RuleError",
    "RuleSet",
    "load_rules",
]
