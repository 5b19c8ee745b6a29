"""A rule's condition as ClickHouse SQL over the stored events (retro-hunts).

The condition language is parsed again (its tokenizer, lists and macros are the rule compiler's) and each
term becomes a SQL expression over the columns of the ``events`` table (``deploy/clickhouse/001_events.sql``),
with the same meaning as the compiled predicate: a list field matches when one element does, a field that is
absent in Python (``None``) never compares equal and is always "not equal", ``in`` accepts a number or its text,
``pmatch`` is a path prefix. Fields that are not columns come from ``raw`` (``audit.request.*``, by the types
``sensors.audit.request`` gives them).

Some terms have no SQL form: the baseline and detect-state functions, IP arithmetic, fields computed in
Python only. They are replaced by a bound: ``true`` where the term counts for the match, ``false`` under a
``not``, so the SQL selects a superset of the hits and the hunt re-checks each selected event with the rule
itself. :attr:`SqlCondition.exact` says whether the SQL alone is the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.rules.condition import (
    _BINARY_WORD_OPS,
    _KEYWORDS,
    Compiler,
    ConditionError,
    _as_number,
    _Tok,
    _tokenize,
)
from streams.rules.fields import is_field

__all__ = ["SqlCondition", "condition_sql", "sql_literal"]

# value types: a scalar string, int or bool, or an array of strings or ints
STR, INT, BOOL, STRS, INTS = "str", "int", "bool", "strs", "ints"


@dataclass(frozen=True)
class _Val:
    expr: str
    type: str
    #: SQL that is true when the Python value is not None (None: always present)
    present: str | None = None


@dataclass(frozen=True)
class SqlCondition:
    """The SQL of a condition: ``where`` selects every hit; ``exact``: and nothing else."""

    where: str
    exact: bool
    #: what had no SQL form (function or field names), for the user
    approximated: tuple[str, ...] = ()


def sql_literal(value: Any) -> str:
    """A ClickHouse literal for a string, number or bool (strings escaped for the SQL text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _basename(expr: str) -> str:
    return f"arrayElement(splitByChar('/', {expr}), -1)"


# cadr field -> (SQL, type, presence): record fields that are columns of the events table
_COLUMNS: dict[str, _Val] = {
    "kind": _Val("kind", STR),
    "source": _Val("source", STR),
    "node": _Val("node", STR),
    "event_id": _Val("event_id", STR),
    "replayed": _Val("replayed", BOOL),
    "enriched": _Val("enriched", BOOL),
    "process.exit_code": _Val("exit_code", INT, "JSONHas(raw, 'process', 'exit_code')"),
    # computed fields with an SQL form
    "process.name": _Val(f"if(exe != '', {_basename('exe')}, comm)", STR),
    "process.cmdline": _Val(
        "if(notEmpty(args), arrayStringConcat(args, ' '), if(exe != '', exe, comm))", STR
    ),
    "process.parent_name": _Val(_basename("parent_exe"), STR, "parent_exe != ''"),
    "process.argc": _Val("length(args)", INT),
    "file.name": _Val(_basename("file_path"), STR),
    "file.truncate": _Val("bitAnd(file_flags, 512) != 0", BOOL),
    "workload.is_host": _Val("(pod = '' AND container_id = '' AND namespace = '')", BOOL),
    "workload.in_container": _Val("NOT (pod = '' AND container_id = '' AND namespace = '')", BOOL),
    "audit.user_is_sa": _Val("startsWith(audit_user, 'system:serviceaccount:')", BOOL),
    "audit.sa_namespace": _Val(
        "splitByChar(':', audit_user)[3]",
        STR,
        "(startsWith(audit_user, 'system:serviceaccount:') AND length(splitByChar(':', audit_user)) = 4)",
    ),
    "audit.sa_name": _Val(
        "splitByChar(':', audit_user)[4]",
        STR,
        "(startsWith(audit_user, 'system:serviceaccount:') AND length(splitByChar(':', audit_user)) = 4)",
    ),
}


def _column_fields() -> dict[str, _Val]:
    """Every stored or ALIAS column of the events table that holds one record field."""
    import pyarrow as pa

    from streams.store.columns import _EVENT_FIELDS, EVENT_ALIAS_FIELDS

    out: dict[str, _Val] = {}
    for column, block, field, arrow in [*_EVENT_FIELDS, *EVENT_ALIAS_FIELDS]:
        if not block:
            continue
        if pa.types.is_list(arrow):
            kind = STRS
        elif pa.types.is_string(arrow):
            kind = STR
        elif pa.types.is_boolean(arrow):
            kind = BOOL
        elif pa.types.is_integer(arrow):
            kind = INT
        else:
            continue  # maps (labels): no SQL form here
        out[f"{block}.{field}"] = _Val(column, kind)
    return out


# audit.request keys by type (sensors.audit.request); a key absent from the request is None
_REQUEST_TYPES: dict[str, str] = {
    **dict.fromkeys(
        [
            "object_kind",
            "service_account",
            "node_name",
            "template_of",
            "role_ref_kind",
            "role_ref_name",
            "secret_type",
            "service_type",
            "container",
            "path",
        ],
        STR,
    ),
    **dict.fromkeys(
        ["privileged", "host_network", "host_pid", "host_ipc", "automount_sa_token", "tty", "stdin", "patch"],
        BOOL,
    ),
    **dict.fromkeys(["run_as_user", "expiration_seconds"], INT),
    **dict.fromkeys(
        [
            "images",
            "image_repos",
            "capabilities_add",
            "host_paths",
            "volume_types",
            "ephemeral_containers",
            "root_containers",
            "rule_verbs",
            "rule_resources",
            "rule_api_groups",
            "subject_names",
            "subject_kinds",
            "data_keys",
            "credential_markers",
            "external_ips",
            "audiences",
            "command",
        ],
        STRS,
    ),
    **dict.fromkeys(["host_ports", "node_ports"], INTS),
}
_CONTAINER_TYPES: dict[str, str] = {
    **dict.fromkeys(["name", "image", "repository", "kind"], STR),
    **dict.fromkeys(
        ["privileged", "allow_privilege_escalation", "run_as_non_root", "read_only_root_fs"], BOOL
    ),
    "run_as_user": INT,
}
_CH_TYPES = {STR: "String", INT: "Int64", BOOL: "Bool", STRS: "Array(String)", INTS: "Array(Int64)"}


def _request_field(path: str) -> _Val | None:
    parts = path.split(".")
    if parts[:2] != ["audit", "request"] or len(parts) < 3:
        return None
    key = parts[2]
    has = f"JSONHas(raw, 'audit', 'request', {sql_literal(key)})"
    if len(parts) == 3 and key in _REQUEST_TYPES:
        kind = _REQUEST_TYPES[key]
        return _Val(
            f"JSONExtract(raw, 'audit', 'request', {sql_literal(key)}, '{_CH_TYPES[kind]}')", kind, has
        )
    if len(parts) == 4 and key == "containers" and parts[3] in _CONTAINER_TYPES:
        sub = sql_literal(parts[3])
        kind = _CONTAINER_TYPES[parts[3]]
        items = "JSONExtractArrayRaw(raw, 'audit', 'request', 'containers')"
        expr = f"arrayMap(c -> JSONExtract(c, {sub}, '{_CH_TYPES[kind]}'), arrayFilter(c -> JSONHas(c, {sub}), {items}))"
        return _Val(expr, STRS if kind == STR else INTS if kind == INT else "bools", has)
    return None


class _Inexact(Exception):
    """A term without an SQL form (carries its name)."""


_TRUE, _FALSE = "1", "0"


class _Translator:
    def __init__(self, compiler: Compiler, text: str) -> None:
        self.c = compiler
        self.tokens = _tokenize(text)
        self.i = 0
        self.text = text
        self.approximated: list[str] = []
        self.columns = {**_column_fields(), **_COLUMNS}

    # -- token plumbing (as condition._Parser) -------------------------------------------------
    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text == text

    def is_punct(self, text: str) -> bool:
        tok = self.peek()
        return tok.kind == "punct" and tok.text == text

    def expect_punct(self, text: str) -> None:
        tok = self.take()
        if tok.kind != "punct" or tok.text != text:
            raise ConditionError(f"expected {text!r} at offset {tok.pos} in {self.text!r}")

    # -- grammar: each level returns (upper bound, lower bound) SQL --------------------------
    def expr(self) -> tuple[str, str]:
        terms = [self.and_()]
        while self.is_word("or"):
            self.take()
            terms.append(self.and_())
        return _join([t[0] for t in terms], "OR"), _join([t[1] for t in terms], "OR")

    def and_(self) -> tuple[str, str]:
        terms = [self.not_()]
        while self.is_word("and"):
            self.take()
            terms.append(self.not_())
        return _join([t[0] for t in terms], "AND"), _join([t[1] for t in terms], "AND")

    def not_(self) -> tuple[str, str]:
        if self.is_word("not"):
            self.take()
            upper, lower = self.not_()
            return f"NOT ({lower})", f"NOT ({upper})"
        return self.atom()

    def atom(self) -> tuple[str, str]:
        tok = self.peek()
        if self.is_punct("("):
            self.take()
            inner = self.expr()
            self.expect_punct(")")
            return inner
        if tok.kind != "word" or tok.text in _KEYWORDS:
            raise ConditionError(f"expected a condition at offset {tok.pos} in {self.text!r}")
        nxt = self.peek(1)
        starts = nxt.kind == "op" or (nxt.kind == "word" and nxt.text in (_BINARY_WORD_OPS | {"exists"}))
        if tok.text in self.c.macros and not starts:
            self.take()
            sub = _Translator(self.c, self.c.macros[tok.text])
            sub.columns = self.columns
            result = sub.expr()
            self.approximated.extend(sub.approximated)
            return result
        try:
            left = self.operand()
        except _Inexact as exc:
            self.approximated.append(str(exc))
            self.skip_term()
            return _TRUE, _FALSE
        nxt = self.peek()
        if nxt.kind == "op" or (nxt.kind == "word" and nxt.text in _BINARY_WORD_OPS):
            try:
                sql = self.comparison(left)
            except _Inexact as exc:
                self.approximated.append(str(exc))
                return _TRUE, _FALSE
            return sql, sql
        if self.is_word("exists"):
            self.take()
            sql = _exists(left)
            return sql, sql
        sql = _truth(left)
        return sql, sql

    def skip_term(self) -> None:
        """Skip the rest of a term that has no SQL form (its call arguments and any comparison)."""
        depth = 0
        while True:
            tok = self.peek()
            if tok.kind == "end":
                return
            if tok.kind == "punct" and tok.text == "(":
                depth += 1
            elif tok.kind == "punct" and tok.text == ")":
                if depth == 0:
                    return
                depth -= 1
            elif depth == 0 and tok.kind == "word" and tok.text in ("and", "or"):
                return
            self.take()

    # -- operands ----------------------------------------------------------------------------
    def operand(self) -> _Val | Any:
        """A field (_Val), a function call (_Val) or a literal (a Python value)."""
        tok = self.take()
        if tok.kind == "str":
            return tok.text
        if tok.kind != "word":
            raise ConditionError(f"expected a field or value at offset {tok.pos} in {self.text!r}")
        if self.is_punct("(") and tok.text in self.c.functions:
            return self.call(tok.text)
        if is_field(tok.text):
            val = self.columns.get(tok.text) or _request_field(tok.text)
            if val is None:
                raise _Inexact(tok.text)
            return val
        if tok.text in ("true", "false"):
            return tok.text == "true"
        num = _as_number(tok.text)
        return tok.text if num is None else num

    def call_args(self) -> list[Any]:
        self.expect_punct("(")
        args: list[Any] = []
        while not self.is_punct(")"):
            if self.is_punct("("):
                args.append(self.literal_list())
            else:
                args.append(self.operand())
            if self.is_punct(","):
                self.take()
        self.take()
        return args

    def call(self, name: str) -> _Val:
        translate = _FUNCTIONS.get(name)
        if translate is None:
            raise _Inexact(name)
        args = self.call_args()
        return translate(args)

    def literal_list(self) -> list[Any]:
        self.expect_punct("(")
        items: list[Any] = []
        while not self.is_punct(")"):
            tok = self.take()
            if tok.kind == "end":
                raise ConditionError(f"unclosed list in {self.text!r}")
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

    # -- comparisons -------------------------------------------------------------------------
    def comparison(self, left: Any) -> str:
        op = self.take().text
        if op in ("in", "pmatch"):
            if self.peek().kind == "word" and self.peek().text in self.c.lists:
                items = self.c.expand_list(self.take().text)
            else:
                items = self.literal_list()
            if not isinstance(left, _Val):
                raise _Inexact(f"literal {op}")
            return _member(left, items) if op == "in" else _pmatch(left, items)
        right = self.operand()
        if not isinstance(left, _Val):
            raise _Inexact(f"literal {op}")
        if isinstance(right, _Val):
            return _compare_fields(left, op, right)
        return _compare(left, op, right)


def _join(parts: list[str], word: str) -> str:
    return parts[0] if len(parts) == 1 else "(" + f" {word} ".join(f"({p})" for p in parts) + ")"


def _guard(val: _Val, sql: str, absent: str = _FALSE) -> str:
    """``sql`` where the value exists; ``absent`` where Python would see None."""
    if val.present is None:
        return sql
    if absent == _FALSE:
        return f"({val.present} AND {sql})"
    return f"(NOT {val.present} OR {sql})"


def _is_array(val: _Val) -> bool:
    return val.type in (STRS, INTS, "bools")


def _elem_type(val: _Val) -> str:
    return {STRS: STR, INTS: INT, "bools": BOOL}.get(val.type, val.type)


def _coerce(kind: str, value: Any) -> Any:
    """The literal as the Python comparison sees it against a value of ``kind`` (condition._cmp_values);
    None when it can never be equal (a word against a number)."""
    if kind == BOOL:
        return value.lower() in {"true", "1", "yes"} if isinstance(value, str) else bool(value)
    if kind == INT:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str):
            num = _as_number(value)
            return num
        return value
    return value if isinstance(value, str) else str(value)


_SQL_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _scalar_test(x: str, kind: str, op: str, value: Any) -> str:
    """SQL for ``x <op> value`` with ``x`` a non-null scalar of ``kind``."""
    if op in _SQL_OPS:
        lit = _coerce(kind, value)
        if lit is None:  # a number field against a word: never equal, always unequal, no order
            return _TRUE if op == "!=" else _FALSE
        if kind == STR and not isinstance(lit, str):
            lit = str(lit)
        return f"({x} {_SQL_OPS[op]} {sql_literal(lit)})"
    text = x if kind == STR else f"toString({x})" if kind == INT else f"if({x}, 'True', 'False')"
    needle = str(value)
    if op == "startswith":
        return f"startsWith({text}, {sql_literal(needle)})"
    if op == "endswith":
        return f"endsWith({text}, {sql_literal(needle)})"
    if op == "contains":
        return f"(position({text}, {sql_literal(needle)}) > 0)"
    if op == "icontains":
        return f"(positionCaseInsensitiveUTF8({text}, {sql_literal(needle)}) > 0)"
    if op == "glob":
        return f"match({text}, {sql_literal(_glob_regex(needle))})"
    raise _Inexact(op)


def _compare(left: _Val, op: str, value: Any) -> str:
    # Python's comparison with a value that is None: never equal, always unequal (condition._compare_values)
    absent = _TRUE if op == "!=" else _FALSE
    if _is_array(left):
        test = _scalar_test("x", _elem_type(left), op, value)
        return _guard(left, f"arrayExists(x -> {test}, {left.expr})", absent)
    return _guard(left, _scalar_test(left.expr, left.type, op, value), absent)


def _compare_fields(left: _Val, op: str, right: _Val) -> str:
    if _is_array(left) or _is_array(right) or left.type != right.type or op not in _SQL_OPS:
        raise _Inexact(f"field {op} field")
    sql = f"({left.expr} {_SQL_OPS[op]} {right.expr})"
    both = [v.present for v in (left, right) if v.present]
    if op == "!=":
        return f"(NOT ({' AND '.join(both)}) OR {sql})" if both else sql
    return f"({' AND '.join([*both, sql])})"


def _member(left: _Val, items: list[Any]) -> str:
    kind = _elem_type(left)
    values: list[Any]
    if kind == INT:
        values = [i for i in items if isinstance(i, int) and not isinstance(i, bool)]
    elif kind == STR:
        values = sorted({str(i) for i in items})
    else:
        values = [i for i in items if isinstance(i, bool)]
    if not values:
        return _FALSE
    array = "[" + ", ".join(sql_literal(v) for v in values) + "]"
    if _is_array(left):
        return _guard(left, f"hasAny({left.expr}, {array})")
    return _guard(left, f"has({array}, {left.expr})")


def _pmatch(left: _Val, items: list[Any]) -> str:
    if _elem_type(left) != STR:
        raise _Inexact("pmatch on a number")
    tests = []
    for item in items:
        p = str(item)
        prefix = p if p.endswith("/") else p + "/"
        tests.append(f"x = {sql_literal(p.rstrip('/'))} OR startsWith(x, {sql_literal(prefix)})")
    body = " OR ".join(f"({t})" for t in tests) or _FALSE
    array = left.expr if _is_array(left) else f"[{left.expr}]"
    return _guard(left, f"arrayExists(x -> {body}, {array})")


def _exists(val: _Val) -> str:
    if _is_array(val):
        return _guard(val, f"notEmpty({val.expr})")
    if val.type == STR:
        return _guard(val, f"({val.expr} != '')")
    return val.present or _TRUE


def _truth(val: Any) -> str:
    if not isinstance(val, _Val):
        return _TRUE if val else _FALSE
    if _is_array(val):
        return _guard(val, f"notEmpty({val.expr})")
    if val.type == STR:
        return _guard(val, f"({val.expr} != '')")
    if val.type == INT:
        return _guard(val, f"({val.expr} != 0)")
    return _guard(val, f"({val.expr})")


def _glob_regex(pattern: str) -> str:
    """An fnmatch pattern as an anchored RE2 expression (``*`` crosses ``/`` as in fnmatch)."""
    out = ["^(?s:"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append("\\[")
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(_re_escape(ch))
        i += 1
    out.append(")$")
    return "".join(out)


def _re_escape(ch: str) -> str:
    return "\\" + ch if ch in ".^$*+?()[]{}|\\" else ch


def _wild_like(pattern: str) -> str:
    """A wildcard pattern (streams.rules.wildcard) as a LIKE pattern."""
    out: list[str] = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append("\\" + ch if ch in "%_\\" else ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append("\\" + ch if ch in "%_" else ch)
    if escaped:
        out.append("\\\\")
    return "".join(out)


def _values(arg: Any) -> list[str]:
    items = arg if isinstance(arg, list) else [arg]
    return [str(i) for i in items if i not in (None, "")]


def _field_arg(arg: Any, name: str) -> _Val:
    if not isinstance(arg, _Val) or _elem_type(arg) != STR:
        raise _Inexact(name)
    return arg


def _any_of(val: _Val, test: Callable[[str], str]) -> _Val:
    """A BOOL value: some element (or the scalar) passes ``test`` (empty strings never count)."""
    if _is_array(val):
        return _Val(_guard(val, f"arrayExists(x -> x != '' AND {test('x')}, {val.expr})"), BOOL)
    return _Val(_guard(val, f"({val.expr} != '' AND {test(val.expr)})"), BOOL)


def _fn_contains_any(args: list[Any]) -> _Val:
    val, needles = _field_arg(args[0], "text.contains_any"), _values(args[1])
    if not needles:
        return _Val(_FALSE, BOOL)
    array = "[" + ", ".join(sql_literal(n) for n in needles) + "]"
    return _any_of(val, lambda x: f"multiSearchAny({x}, {array})")


def _fn_match_any(casefold: bool) -> Callable[[list[Any]], _Val]:
    def translate(args: list[Any]) -> _Val:
        val, patterns = _field_arg(args[0], "text.match_any"), _values(args[1])
        like = "ilike" if casefold else "like"
        if not patterns:
            return _Val(_FALSE, BOOL)
        return _any_of(
            val,
            lambda x: "(" + " OR ".join(f"{like}({x}, {sql_literal(_wild_like(p))})" for p in patterns) + ")",
        )

    return translate


def _fn_regex_any(args: list[Any]) -> _Val:
    val, patterns = _field_arg(args[0], "text.regex_any"), _values(args[1])
    if not patterns:
        return _Val(_FALSE, BOOL)
    return _any_of(val, lambda x: "(" + " OR ".join(f"match({x}, {sql_literal(p)})" for p in patterns) + ")")


def _fn_glob_any(args: list[Any]) -> _Val:
    val, patterns = _field_arg(args[0], "text.glob_any"), _values(args[1])
    if not patterns:
        return _Val(_FALSE, BOOL)
    return _any_of(
        val, lambda x: "(" + " OR ".join(f"match({x}, {sql_literal(_glob_regex(p))})" for p in patterns) + ")"
    )


_FUNCTIONS: dict[str, Callable[[list[Any]], _Val]] = {
    "text.contains_any": _fn_contains_any,
    "text.match_any": _fn_match_any(casefold=False),
    "text.imatch_any": _fn_match_any(casefold=True),
    "text.regex_any": _fn_regex_any,
    "text.glob_any": _fn_glob_any,
}


def condition_sql(compiler: Compiler, condition: str) -> SqlCondition:
    """The SQL ``WHERE`` expression of ``condition`` (see the module docstring)."""
    translator = _Translator(compiler, condition)
    upper, _lower = translator.expr()
    if translator.peek().kind != "end":
        raise ConditionError(f"unexpected {translator.peek().text!r} in {condition!r}")
    approximated = tuple(dict.fromkeys(translator.approximated))
    return SqlCondition(where=upper, exact=not approximated, approximated=approximated)
