"""What a read-only session may run, decided on ClickHouse's own syntax tree (not by string matching).

``readonly = 1`` is the first guard: ClickHouse refuses writes, DDL, settings changes and most table functions.
It leaves gaps that this module closes (measured on ClickHouse 26.9 through chdb): the *scalar* ``file(path)``
reads a host file, ``INTO OUTFILE`` writes one from SHOW, DESCRIBE, EXPLAIN and EXISTS, the ``cluster`` and
``input`` table functions are allowed, ``SYSTEM STOP MERGES`` and ``KILL QUERY`` run on an embedded engine, and
one request may carry several statements.

The statement is parsed by the engine that will run it: ``parseQueryToJSON`` returns the syntax tree as JSON in
one round trip (a multi-statement request is a syntax error there). A few statements have no JSON form yet
(DESCRIBE, EXISTS, SHOW CREATE, SHOW PROCESSLIST ...), and servers older than 26.x lack the function: those are
checked on the text tree of ``EXPLAIN AST``, with the same rules. The statement is allowed when:

- it is one SELECT (with its WITH, UNION, INTERSECT), SHOW, DESCRIBE, EXISTS or EXPLAIN of one of these;
- nothing in it writes a file (``INTO OUTFILE``, also ``AND STDOUT``, ``APPEND``, ``TRUNCATE``) — a ``FORMAT``
  clause alone only names the output format and stays allowed;
- it has no ``SETTINGS`` clause (the session's limits are fixed by cadr; EXPLAIN's own options are not settings);
- no function anywhere — nested, in a lambda, a subquery, a CTE, a ``view()`` — reads the host or the network
  (:data:`DENIED_FUNCTIONS`, every ``dict*`` function, every table function but the generators in
  :data:`ALLOWED_TABLE_FUNCTIONS`), and no table of :data:`DENIED_SYSTEM_TABLES` is read.

Anything the checker cannot read (an unknown tree shape, a tree nested deeper than it walks) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.store.errors import QueryError

__all__ = [
    "ALLOWED_TABLE_FUNCTIONS",
    "DENIED_FUNCTIONS",
    "DENIED_SYSTEM_TABLES",
    "check_statement",
    "escape_param",
    "function_refusal",
]

#: table functions that only generate or re-shape data given in the query (everything else reads a file, a URL,
#: another server, an object store, a Python object, or evaluates a query built from a string)
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "primes",
        "values",
        "sqlstandardvalues",
        "generaterandom",
        "generateseries",
        "generate_series",
        "null",
        "format",
        "view",
        "viewifpermitted",
    }
)

#: every table function of ClickHouse 26.9 that is not allowed; listed so that the same name used as a scalar
#: function (``file``) or inside an expression is refused too (tests/security checks this list against the
#: engine's ``system.table_functions``, so a new engine version cannot add one silently)
DENIED_TABLE_FUNCTIONS = frozenset(
    {
        "arrowstream",
        "azureblobstorage",
        "azureblobstoragecluster",
        "bigquery",
        "cluster",
        "clusterallreplicas",
        "cosn",
        "deltalake",
        "deltalakeazure",
        "deltalakeazurecluster",
        "deltalakecluster",
        "deltalakelocal",
        "deltalakes3",
        "deltalakes3cluster",
        "dictionary",
        "eval",
        "executable",
        "file",
        "filecluster",
        "filesystem",
        "fuzzjson",
        "fuzzquery",
        "gcs",
        "hdfs",
        "hdfscluster",
        "hudi",
        "hudicluster",
        "iceberg",
        "icebergazure",
        "icebergazurecluster",
        "icebergcluster",
        "iceberghdfs",
        "iceberghdfscluster",
        "iceberglocal",
        "iceberglocalcluster",
        "icebergs3",
        "icebergs3cluster",
        "input",
        "jdbc",
        "loop",
        "merge",
        "mergetreeanalyzeindexes",
        "mergetreeanalyzeindexesuuid",
        "mergetreecodecblockcounts",
        "mergetreeindex",
        "mergetreeprojection",
        "mergetreetextindex",
        "mongodb",
        "mysql",
        "odbc",
        "oss",
        "paimon",
        "paimonazure",
        "paimonazurecluster",
        "paimoncluster",
        "paimonhdfs",
        "paimonhdfscluster",
        "paimonlocal",
        "paimons3",
        "paimons3cluster",
        "postgresql",
        "prometheusquery",
        "prometheusqueryrange",
        "python",
        "redis",
        "remote",
        "remotesecure",
        "s3",
        "s3cluster",
        "sqlite",
        "timeseriesdata",
        "timeseriesmetricfamilies",
        "timeseriesmetrics",
        "timeseriessamples",
        "timeseriesselector",
        "timeseriestags",
        "url",
        "urlcluster",
        "viewexplain",
        "ytsaurus",
    }
)

#: scalar functions that read the host, its configuration or the network, or write the server log; with the
#: table-function names above and every ``dict*`` function (dictionaries load from files, URLs and databases)
DENIED_FUNCTIONS = DENIED_TABLE_FUNCTIONS | frozenset(
    {
        "file",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
        "hostname",
        "fqdn",
        "displayname",
        "getoskernelversion",
        "getmacro",
        "getserverport",
        "tcpport",
        "getserversetting",
        "getmergetreesetting",
        "serveruuid",
        "getclienthttpheader",
        "zookeepersessionuptime",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "catboostevaluate",
        "naivebayesclassifier",
        "naivebayesclassifierwithprob",
        "naivebayesclassifierwithallprobs",
        "logtrace",
    }
)
_DENIED_PREFIXES = ("dictget", "dicthas", "dictisin")

#: system tables that read host files (CA certificates), expose secrets (named collections) or the process's
#: memory and symbols
DENIED_SYSTEM_TABLES = frozenset(
    {
        "certificates",
        "named_collections",
        "stack_trace",
        "symbols",
        "jemalloc_profile_text",
        "jemalloc_sampled_allocations",
        "user_directories",
        "fail_points",
        "zookeeper",
        "zookeeper_connection",
    }
)

_PARSE = "SELECT parseQueryToJSON({q:String}) FORMAT TSVRaw"
# The output-format clause clickhouse-connect appends ("\n FORMAT Native") would format EXPLAIN's own output.
# Cutting "FORMAT word" off the end cannot hide anything from the check: it holds no call, quote or comment.
_TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$")
_READ_ROOTS = ("select", "explain", "show", "describe", "exists")
_STATEMENT_NODES = (
    "SelectWithUnionQuery",
    "SelectIntersectExceptQuery",
    "Explain",
    "Show",
    "SHOW",
    "Describe",
    "Exists",
)


def escape_param(value: str) -> str:
    """Escape a bound value the way ClickHouse's HTTP interface expects ``param_*`` values (escaped TSV)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def function_refusal(name: str, *, table_function: bool = False) -> str | None:
    """Why the function ``name`` is refused in a read-only session, or None when it is allowed."""
    base = name.rsplit(".", 1)[-1].strip('`"').lower()
    if table_function and base not in ALLOWED_TABLE_FUNCTIONS:
        return f"table function {name}() reads outside the event store"
    if base in DENIED_FUNCTIONS or base.startswith(_DENIED_PREFIXES):
        return f"function {name}() reads the host, its configuration or the network"
    return None


@dataclass
class _Check:
    """The facts gathered from one syntax tree, and the first reason to refuse it."""

    params: Mapping[str, Any]
    database: str
    reasons: list[str] = field(default_factory=list)

    def refuse(self, reason: str) -> None:
        self.reasons.append(reason)

    def root(self, kind: str) -> None:
        if not kind.lower().startswith(_READ_ROOTS):
            self.refuse(f"{kind or 'this statement'} is not a read query")

    def table(self, parts: list[str]) -> None:
        parts = [p.strip('`"').lower() for p in parts if p]
        if len(parts) == 1 and self.database.lower() == "system":
            parts = ["system", parts[0]]
        if len(parts) >= 2 and parts[-2] == "system" and parts[-1] in DENIED_SYSTEM_TABLES:
            self.refuse(f"system table {'.'.join(parts[-2:])} reads the host or the process")

    def identifier_param(self, name: str) -> None:
        value = self.params.get(name)
        if not isinstance(value, str) or not _PLAIN_NAME.match(value):
            self.refuse(f"parameter {name!r} of type Identifier must be a plain name like db or db.table")
            return
        self.table(value.split("."))


def check_statement(
    sql: str,
    run: Callable[[str, dict[str, Any]], str],
    params: Mapping[str, Any] | None = None,
    *,
    database: str = "",
    encode: Callable[[str], Any] = escape_param,
) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one read-only statement (see the module docstring).

    ``run(query, params)`` executes a query with bound ``{name:Type}`` parameters on the engine that will run
    ``sql`` and returns its output as text (the queries sent carry their own FORMAT where it matters); ``params``
    are the values bound to ``sql`` in the form ``run`` takes them, and ``encode`` puts a string in that form
    (escaped text for raw ``param_*`` values, the identity for clickhouse-connect, which escapes by itself).
    ``database`` is the session's current database (unqualified table names resolve there).
    """
    check = _Check(params=dict(params or {}), database=database)
    try:
        tree = run(_PARSE, {"q": encode(sql)})
    except Exception as exc:
        message = _first_line(exc)
        if "JSON serialization" not in message and not _no_json_parser(message):
            raise QueryError(f"read-only session: {message}") from exc
        if _no_json_parser(message):
            # A server without parseQueryToJSON: reject several statements the way the old check did.
            _run_checked(run, "SELECT formatQuerySingleLine({q:String})", {"q": encode(sql)})
        explain = "EXPLAIN AST " + _TRAILING_FORMAT.sub("", sql.strip().rstrip(";"))
        text = _run_checked(run, explain, dict(check.params))
        _check_text(text, check)
    else:
        try:
            node = orjson.loads(tree)
        except orjson.JSONDecodeError as exc:
            raise QueryError("read-only session: the statement is nested too deeply to be checked") from exc
        _check_json(node, check)
    if check.reasons:
        raise QueryError(f"read-only session: {check.reasons[0]} (refused)")


def _no_json_parser(message: str) -> bool:
    return "parseQueryToJSON" in message and ("UNKNOWN_FUNCTION" in message or "Code: 46." in message)


def _run_checked(run: Callable[[str, dict[str, Any]], str], query: str, params: dict[str, Any]) -> str:
    try:
        return run(query, params)
    except Exception as exc:
        raise QueryError(f"read-only session: {_first_line(exc)}") from exc


# -- the JSON tree (parseQueryToJSON) ---------------------------------------------------------------------


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, list):
        for item in node:
            yield "", item


def _check_json(tree: Any, check: _Check) -> None:
    if not isinstance(tree, dict):
        check.refuse("the statement's syntax tree has an unknown shape")
        return
    check.root(str(tree.get("type", "")))
    # An explicit stack, not recursion: a tree may be nested as deep as the parser allows (1,000 levels).
    stack: list[tuple[str, str, Any]] = [("", "", tree)]
    while stack:
        key, parent_type, node = stack.pop()
        if isinstance(node, dict):
            kind = str(node.get("type", ""))
            _check_json_node(key, parent_type, kind, node, check)
            stack.extend((k, kind, v) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((key, parent_type, v) for v in node if isinstance(v, (dict, list)))


def _check_json_node(key: str, parent_type: str, kind: str, node: dict[str, Any], check: _Check) -> None:
    if node.get("out_file") or node.get("is_into_outfile_with_stdout"):
        check.refuse("INTO OUTFILE writes a file")
    if kind == "Function":
        reason = function_refusal(str(node.get("name", "")), table_function=key == "table_function")
        if reason:
            check.refuse(reason)
    elif kind in ("TableIdentifier", "Identifier"):
        check.table(_identifier_parts(node, check))
    elif kind == "QueryParameter" and str(node.get("param_type", "")) == "Identifier":
        check.identifier_param(str(node.get("name", "")))
    elif kind == "SetQuery" and not (key == "settings" and parent_type == "ExplainQuery"):
        check.refuse("a SETTINGS clause cannot change the session's limits")
    elif kind == "ExplainQuery" and isinstance(node.get("query"), dict):
        check.root(str(node["query"].get("type", "")))


def _identifier_parts(node: dict[str, Any], check: _Check) -> list[str]:
    """The parts of a (table) identifier, with ``{name:Identifier}`` parameters filled in: ``{db:Identifier}.
    {t:Identifier}`` is two empty parts and two parameter children, in order."""
    parts = [str(p) for p in (node.get("name_parts") or str(node.get("name", "")).split("."))]
    params = iter(
        c for c in node.get("children", []) if isinstance(c, dict) and c.get("type") == "QueryParameter"
    )
    filled: list[str] = []
    for part in parts:
        if part:
            filled.append(part)
            continue
        param = next(params, None)
        value = check.params.get(str(param.get("name", ""))) if param is not None else None
        # (a parameter that is no plain name is refused by its own check)
        filled.extend(value.split(".") if isinstance(value, str) and _PLAIN_NAME.match(value) else [""])
    return filled


# -- the text tree (EXPLAIN AST) ------------------------------------------------------------------------


def _check_text(text: str, check: _Check) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        check.refuse("the statement's syntax tree is empty")
        return
    check.root(lines[0].strip())
    # (depth, node type) of the open ancestors of the current line
    path: list[tuple[int, str]] = []
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        words = line.strip().split(" ")
        kind = words[0]
        while path and path[-1][0] >= depth:
            path.pop()
        parent = path[-1][1] if path else ""
        if kind == "Literal" and parent.startswith(_STATEMENT_NODES):
            check.refuse("INTO OUTFILE writes a file")
        elif kind == "Function" and len(words) > 1:
            reason = function_refusal(words[1], table_function=parent == "TableExpression")
            if reason:
                check.refuse(reason)
        elif kind in ("TableIdentifier", "Identifier") and len(words) > 1:
            check.table(words[1].split("."))
        elif kind == "Set" and not parent.startswith("Explain"):
            check.refuse("a SETTINGS clause cannot change the session's limits")
        elif parent.startswith("Explain") and depth == 1 and kind not in ("Set", "Literal"):
            check.root(kind)
        path.append((depth, kind))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    idx = text.find("Code: ")
    text = text[idx:] if idx >= 0 else text
    return text.splitlines()[0] if text else type(exc).__name__
