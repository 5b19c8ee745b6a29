"""A second lock on read-only sessions, using ClickHouse's own parser (not string matching).

``readonly = 1`` is the primary guard and refuses writes, DDL, settings changes and most SYSTEM queries. The
embedded engine leaves gaps that a server closes with per-user grants: a few SYSTEM statements (``STOP
MERGES``, ``STOP MOVES``), ``KILL QUERY``, ``INTO OUTFILE`` (clickhouse-local writes the file) and several
statements in one request. So a read-only session also asks the engine to parse the request: it must be one
statement (``formatQuerySingleLine`` rejects multi-statements) whose syntax tree is a SELECT, SHOW, DESCRIBE,
EXISTS or EXPLAIN with no ``INTO OUTFILE`` — or a write that ``readonly`` refuses by itself (INSERT, ALTER,
DROP, CREATE ...), which is passed on so that the refusal is the engine's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from streams.store.errors import QueryError

__all__ = ["ALLOWED_STATEMENTS", "LEFT_TO_READONLY", "check_statement", "escape_param"]

# The output-format clause clickhouse-connect appends ("\n FORMAT Native") would format EXPLAIN's own output.
_TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+\w+\s*;?\s*$", re.IGNORECASE)

#: syntax-tree roots a read-only session may run
ALLOWED_STATEMENTS = (
    "SelectWithUnionQuery",
    "SelectIntersectExceptQuery",
    "SelectQuery",
    "Explain",
    "Show",
    "DescribeQuery",
    "ExistsTableQuery",
    "ExistsDatabaseQuery",
    "ExistsViewQuery",
    "ExistsDictionaryQuery",
)


#: writes that ``readonly`` refuses by itself: let them through so the refusal is the engine's own
LEFT_TO_READONLY = (
    "InsertQuery",
    "AlterQuery",
    "AlterCommand",
    "DropQuery",
    "CreateQuery",
    "CreateUserQuery",
    "RenameQuery",
    "OptimizeQuery",
    "Rename",
    "TruncateQuery",
    "DeleteQuery",
    "UpdateQuery",
    "UndropQuery",
)


def escape_param(value: str) -> str:
    """Escape a bound value the way ClickHouse's HTTP interface expects ``param_*`` values (escaped TSV)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def check_statement(
    sql: str,
    run: Callable[[str, dict[str, Any]], str],
    params: Mapping[str, Any] | None = None,
    *,
    encode: Callable[[str], Any] = escape_param,
) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one read-only statement.

    ``run(query, params)`` executes a query with bound ``{name:String}`` parameters on the engine that will
    run ``sql`` and returns its output as TSVRaw text; ``params`` are the values bound to ``sql`` in the form
    ``run`` takes them, and ``encode`` puts a string in that form (escaped text for raw ``param_*`` values,
    the identity for clickhouse-connect, which escapes by itself).
    """
    try:
        run("SELECT formatQuerySingleLine({q:String})", {"q": encode(sql)})
        tree = run("EXPLAIN AST " + _TRAILING_FORMAT.sub("", sql.strip().rstrip(";")), dict(params or {}))
    except QueryError:
        raise
    except Exception as exc:
        raise QueryError(_first_line(exc)) from exc
    lines = tree.splitlines()
    root = lines[0].strip().split(" ", 1)[0] if lines else ""
    if root not in LEFT_TO_READONLY and not any(root.startswith(name) for name in ALLOWED_STATEMENTS):
        raise QueryError(f"read-only session: {root or 'this statement'} is not a read query (refused)")
    # INTO OUTFILE is a Literal directly under the query root; nothing else puts a bare literal there.
    if root.startswith("Select") and any(line.startswith(" Literal") for line in lines[1:]):
        raise QueryError("read-only session: INTO OUTFILE is refused")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    idx = text.find("Code: ")
    text = text[idx:] if idx >= 0 else text
    return text.splitlines()[0] if text else type(exc).__name__
