"""The condition language: Falco-like sentences compiled once into Python closures.

``spawned_process and in_container and process.name in (shell_binaries)`` is tokenized,
parsed by recursive descent, macros and lists are expanded, and the tree becomes nested
closures ``f(ctx) -> bool`` — no interpretation per event. See FORMAT.md for the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.errors import CadrError
from schemas.glob import glob_match
from streams.rules.fields import FieldError, Getter, compile_field, is_field
from streams.rules.functions import BASELINE_FACTS

__all__ = ["MAX_NESTING", "Compiler", "ConditionError", "Predicate", "ValueFn"]


class ConditionError(CadrError):
    """A rule condition could not be parsed or compiled; the message says where."""


#: a compiled condition: ctx -> bool (ctx has .event and whatever functions need)
Predicate = Callable[[Any], bool]
ValueFn = Callable[[Any], Any]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op><=|>=|!=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[^\s(),"'=<>!]+)
    )""",
    re.VERBOSE,
)

#: deepest nesting of parentheses, ``not`` and function calls in one condition; a recursive-descent parser must
#: refuse deeper input with a clear error rather than overflow Python's stack
MAX_NESTING = 64

_BINARY_WORD_OPS = {"in", "startswith", "endswith", "contains", "icontains", "glob", "pmatch"}
_KEYWORDS = {"and", "or", "not", "exists"} | _BINARY_WORD_OPS


@dataclass(frozen=True)
class _Tok:
    kind: str  # str | op | punct | word | end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ConditionError(f"unexpected character {text[pos]!r} at offset {pos}")
        kind = m.lastgroup or "word"
        value = m.group(kind)
        if kind == "str":
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        tokens.append(_Tok(kind, value, m.start(kind)))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


def _as_number(text: str) -> int | float | None:
    try:
        return int(text, 0)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def _cmp_values(left: Any, right: Any) -> tuple[Any, Any]:
    """Bring a literal to the left value's type (numbers compare as numbers)."""
    if isinstance(left, bool):
        if isinstance(right, str):
            return left, right.lower() in {"true", "1", "yes"}
        return left, bool(right)
    if isinstance(left, (int, float)) and isinstance(right, str):
        num = _as_number(right)
        return left, right if num is None else num
    if isinstance(left, str) and isinstance(right, (int, float)):
        return left, str(right)
    return left, right


_NO_CONSTANT = object()


def _chain(terms: list[Predicate], word: str) -> Predicate:
    """``t0 and t1 and ...`` (or ``or``) as one function, short-circuiting like Python: a rule's chain of ten
    terms costs one call per term evaluated instead of a nested call per term. The generated source holds only
    the term indices, never text from a rule."""
    if len(terms) == 1:
        return terms[0]
    names = {f"t{i}": term for i, term in enumerate(terms)}
    source = "lambda ctx: " + f" {word} ".join(f"{name}(ctx)" for name in names)
    return eval(source, names)  # generated from term indices only


def _const(value: Any) -> ValueFn:
    def const(ctx: Any) -> Any:
        return value

    const.constant = value  # type: ignore[attr-defined]  # lets comparisons fold the literal at compile time
    return const


def _compare_constant(left: ValueFn, op: str, test: Callable[[Any, Any], bool], rv: Any) -> Predicate:
    """``left <op> literal``: the literal is brought to a string's type once, at compile time, and a string on
    the left (paths, names, most fields) is compared without the per-call coercion. Any other left value takes
    the general path, with the same results."""
    rv_for_str = _cmp_values("", rv)[1]
    rv_for_int = _cmp_values(0, rv)[1]

    def compare(ctx: Any) -> bool:
        lv = left(ctx)
        cls = lv.__class__
        if cls is str or cls is int:  # most fields: coerce nothing per call
            try:
                return test(lv, rv_for_str if cls is str else rv_for_int)
            except TypeError:
                return False
        return _compare_values(lv, rv, op, test)

    return compare


def _compare_values(lv: Any, rv: Any, op: str, test: Callable[[Any, Any], bool]) -> bool:
    """``lv <op> rv`` for any left value: a scalar (the literal brought to its type), ``None`` or a list (true
    when one element matches; ``!=`` on a scalar is the plain negation)."""
    if op == "!=" and not isinstance(lv, list):
        if lv is None:
            return rv is not None
        a, b = _cmp_values(lv, rv)
        return bool(a != b)

    def one(v: Any) -> bool:
        a, b = _cmp_values(v, rv)
        try:
            return test(a, b)
        except TypeError:
            return False

    return _any(lv, one)


def _any(value: Any, test: Callable[[Any], bool]) -> bool:
    if isinstance(value, list):
        return any(test(v) for v in value if v is not None)
    return value is not None and test(value)


class Compiler:
    """Compiles condition strings with shared lists, macros and functions."""

    def __init__(
        self,
        lists: Mapping[str, list[Any]],
        macros: Mapping[str, str],
        functions: Mapping[str, Callable[..., Any]],
    ) -> None:
        self.lists = dict(lists)
        self.macros = dict(macros)
        self.functions = dict(functions)
        self._macro_cache: dict[str, Predicate] = {}
        self._expanding: list[str] = []
        #: how deep the parsers are now, macro expansions included (see MAX_NESTING)
        self.nesting = 0

    # -- entry points -------------------------------------------------------------------------
    def compile(self, text: str) -> Predicate:
        """Compile a full condition into a predicate."""
        parser = _Parser(self, _tokenize(text), text)
        pred = parser.parse_expr()
        parser.expect_end()
        return pred

    def compile_value(self, path: str) -> ValueFn:
        """A getter for an output placeholder or dedup field (ctx -> value). ``baseline.<fact>`` names
        one of the baseline's facts (:data:`streams.rules.functions.BASELINE_FACTS`), "" without one."""
        if path.startswith("baseline."):
            fact = path.removeprefix("baseline.")
            if fact not in BASELINE_FACTS:
                raise ConditionError(
                    f"unknown baseline fact {path!r} (known: {', '.join(sorted(BASELINE_FACTS))})"
                )
            return lambda ctx: getattr(ctx.baseline, fact)() if ctx.baseline is not None else ""
        getter = self._field(path)
        return lambda ctx: getter(ctx.event)

    def expand_list(self, name: str, seen: tuple[str, ...] = ()) -> list[Any]:
        """A named list with nested list references expanded."""
        if name in seen:
            raise ConditionError(f"list {name!r} refers to itself")
        out: list[Any] = []
        for item in self.lists[name]:
            if isinstance(item, str) and item in self.lists:
                out.extend(self.expand_list(item, (*seen, name)))
            else:
                out.append(item)
        return out

    # -- helpers used by the parser ----------------------------------------------------------
    def _field(self, path: str) -> Getter:
        try:
            return compile_field(path)
        except FieldError as exc:
            raise ConditionError(str(exc)) from exc

    def macro(self, name: str) -> Predicate:
        if name in self._macro_cache:
            return self._macro_cache[name]
        if name in self._expanding:
            raise ConditionError(f"macro {name!r} refers to itself ({' -> '.join([*self._expanding, name])})")
        self._expanding.append(name)
        try:
            parser = _Parser(self, _tokenize(self.macros[name]), self.macros[name])
            pred = parser.parse_expr()
            parser.expect_end()
        except ConditionError as exc:
            raise ConditionError(f"in macro {name!r}: {exc}") from exc
        finally:
            self._expanding.pop()
        self._macro_cache[name] = pred
        return pred


class _Parser:
    def __init__(self, compiler: Compiler, tokens: list[_Tok], text: str) -> None:
        self.c = compiler
        self.tokens = tokens
        self.i = 0
        self.text = text

    # -- token plumbing ----------------------------------------------------------------------
    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: _Tok | None = None) -> ConditionError:
        tok = tok or self.peek()
        return ConditionError(f"{message} at offset {tok.pos} in {self.text!r}")

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.take()
        if tok.kind != kind or (text is not None and tok.text != text):
            raise self.error(f"expected {text or kind!r}, found {tok.text or 'end'!r}", tok)
        return tok

    def expect_end(self) -> None:
        if self.peek().kind != "end":
            raise self.error(f"unexpected {self.peek().text!r}")

    def is_word(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text == text

    # -- grammar -----------------------------------------------------------------------------
    def parse_expr(self) -> Predicate:
        terms = [self.parse_and()]
        while self.is_word("or"):
            self.take()
            terms.append(self.parse_and())
        return _chain(terms, "or")

    def parse_and(self) -> Predicate:
        terms = [self.parse_not()]
        while self.is_word("and"):
            self.take()
            terms.append(self.parse_not())
        return _chain(terms, "and")

    def parse_not(self) -> Predicate:
        # every nested level (parentheses, not, function calls) passes through here or parse_call
        self.enter()
        try:
            if self.is_word("not"):
                self.take()
                inner = self.parse_not()
                return lambda ctx: not inner(ctx)
            return self.parse_atom()
        finally:
            self.c.nesting -= 1

    def enter(self) -> None:
        self.c.nesting += 1
        if self.c.nesting > MAX_NESTING:
            raise self.error(f"nested more than {MAX_NESTING} levels deep (macros included)")

    def parse_atom(self) -> Predicate:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            inner = self.parse_expr()
            self.expect("punct", ")")
            return inner
        if tok.kind != "word" or tok.text in _KEYWORDS:
            raise self.error(f"expected a condition, found {tok.text or 'end'!r}")
        nxt = self.peek(1)
        # a bare macro name (not followed by an operator)
        if tok.text in self.c.macros and not self._starts_comparison(nxt):
            self.take()
            return self.c.macro(tok.text)
        left = self.parse_operand()
        nxt = self.peek()
        if nxt.kind == "op" or (nxt.kind == "word" and nxt.text in _BINARY_WORD_OPS):
            return self.parse_comparison(left)
        if nxt.kind == "word" and nxt.text == "exists":
            self.take()
            return lambda ctx: left(ctx) not in (None, [], "", {})
        if tok.kind == "word" and not self._is_value_source(tok):
            # a bare word that is no macro, field or function would be a constant string and the
            # condition silently always true: a misspelt macro name must fail at load instead
            raise self.error(f"unknown macro or field {tok.text!r}", tok)
        return lambda ctx: bool(left(ctx))

    def _is_value_source(self, tok: _Tok) -> bool:
        """Whether a bare word stands for something evaluated per event (not a literal)."""
        return is_field(tok.text) or tok.text in self.c.functions or tok.text in {"true", "false"}

    @staticmethod
    def _starts_comparison(tok: _Tok) -> bool:
        return tok.kind == "op" or (tok.kind == "word" and tok.text in (_BINARY_WORD_OPS | {"exists"}))

    def parse_operand(self) -> ValueFn:
        tok = self.take()
        if tok.kind == "str":
            return _const(tok.text)
        if tok.kind != "word":
            raise self.error(f"expected a field, value or function, found {tok.text!r}", tok)
        if self.peek().kind == "punct" and self.peek().text == "(" and tok.text in self.c.functions:
            return self.parse_call(tok)
        if is_field(tok.text):
            getter = self.c._field(tok.text)
            return lambda ctx: getter(ctx.event)
        if self.peek().kind == "punct" and self.peek().text == "(":
            raise self.error(f"unknown function {tok.text!r}", tok)
        num = _as_number(tok.text)
        literal: Any = tok.text if num is None else num
        if tok.text in {"true", "false"}:
            literal = tok.text == "true"
        return _const(literal)

    def parse_call(self, name_tok: _Tok) -> ValueFn:
        self.enter()
        try:
            return self._parse_call(name_tok)
        finally:
            self.c.nesting -= 1

    def _parse_call(self, name_tok: _Tok) -> ValueFn:
        fn = self.c.functions[name_tok.text]
        self.expect("punct", "(")
        args: list[ValueFn] = []
        if not (self.peek().kind == "punct" and self.peek().text == ")"):
            while True:
                if self.peek().kind == "punct" and self.peek().text == "(":
                    items = self.parse_list()
                    args.append(_const(items))
                else:
                    args.append(self.parse_operand())
                if self.peek().kind == "punct" and self.peek().text == ",":
                    self.take()
                    continue
                break
        self.expect("punct", ")")
        return lambda ctx: fn(ctx, *(a(ctx) for a in args))

    def parse_list(self) -> list[Any]:
        self.expect("punct", "(")
        items: list[Any] = []
        while not (self.peek().kind == "punct" and self.peek().text == ")"):
            tok = self.take()
            if tok.kind == "end":
                raise self.error("unclosed list", tok)
            if tok.kind == "punct" and tok.text == ",":
                continue
            if tok.kind == "word" and tok.text in self.c.lists:
                items.extend(self.c.expand_list(tok.text))
            elif tok.kind == "str":
                items.append(tok.text)
            else:
                num = _as_number(tok.text)
                items.append(tok.text if num is None else num)
        self.take()
        return items

    def parse_comparison(self, left: ValueFn) -> Predicate:
        op = self.take().text
        if op in {"in", "pmatch"}:
            if self.peek().kind == "word" and self.peek().text in self.c.lists:
                items = self.c.expand_list(self.take().text)
            else:
                items = self.parse_list()
            if op == "in":
                members = set(items) | {str(i) for i in items}

                def member(v: Any) -> bool:
                    return v in members

                def is_in(ctx: Any) -> bool:
                    lv = left(ctx)
                    if lv.__class__ is str:  # the common case, without the list walk
                        return lv in members
                    return _any(lv, member)

                return is_in
            prefixes = tuple(str(i) for i in items)

            def pmatch(v: Any) -> bool:
                s = str(v)
                return any(
                    s == p.rstrip("/") or s.startswith(p if p.endswith("/") else p + "/") for p in prefixes
                )

            return lambda ctx: _any(left(ctx), pmatch)
        right = self.parse_operand()
        tests: dict[str, Callable[[Any, Any], bool]] = {
            "=": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "startswith": lambda a, b: str(a).startswith(str(b)),
            "endswith": lambda a, b: str(a).endswith(str(b)),
            "contains": lambda a, b: str(b) in str(a),
            "icontains": lambda a, b: str(b).lower() in str(a).lower(),
            # fnmatch's syntax, matched in linear time (a field value is attacker-chosen)
            "glob": lambda a, b: glob_match(str(a), str(b)),
        }
        test = tests[op]
        constant = getattr(right, "constant", _NO_CONSTANT)
        if constant is not _NO_CONSTANT:
            return _compare_constant(left, op, test, constant)

        def compare(ctx: Any) -> bool:
            rv = right(ctx)
            return _compare_values(left(ctx), rv, op, test)

        return compare
