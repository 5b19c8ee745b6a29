"""``cadr query``: read-only forensic SQL over the event store, and named queries for common hunts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.errors import CadrError
from schemas.settings import Settings
from schemas.text import escape_controls

__all__ = ["FORMATS", "register", "run_query"]

#: output format name → ClickHouse output format (the server renders; nothing is re-encoded here)
FORMATS = {
    "table": "PrettyCompactMonoBlock",
    "jsonl": "JSONEachRow",
    "csv": "CSVWithNames",
    "parquet": "Parquet",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query",
        help="read-only SQL over the event store, or a named hunt (--named NAME)",
        description=(
            "Run read-only SQL against the event store (tables: events, alerts, incidents, profiles; views: "
            "alerts_latest, incidents_latest, profiles_latest). The session is read-only at the server, and "
            "ClickHouse's own parser must show one SELECT, SHOW, DESCRIBE, EXISTS or EXPLAIN without INTO OUTFILE, "
            "SETTINGS or any function that reads files, URLs or other servers; each query runs within the "
            "store.query_* limits (memory, time, result size). Parameters are bound by the server: write "
            "{name:Type} in the SQL and pass --param name=value. While `cadr up` or `cadr worker` owns the "
            "embedded store, the query goes through its local read-only endpoint."
        ),
        epilog="Named queries: --list shows them with their parameters.",
    )
    p.add_argument("sql", nargs="?", help="the SQL to run (omit with --named or --list)")
    p.add_argument("-n", "--named", metavar="NAME", help="run a named query (default: none; see --list)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind a parameter (repeatable; default: none). Times take ISO 8601, epoch, 'now' or '-2h'",
    )
    p.add_argument(
        "-f",
        "--format",
        choices=sorted(FORMATS),
        default="table",
        help="output format (default: table; parquet needs --output or a redirected stdout)",
    )
    p.add_argument("-o", "--output", help="write the result to this file (default: stdout)")
    p.add_argument("--list", action="store_true", help="list the named queries and exit (default: off)")
    p.add_argument("--json", action="store_true", help="same as --format jsonl (default: off)")
    p.set_defaults(handler=_handle)


def _parse_params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CadrError(f"--param wants NAME=VALUE, got {pair!r}")
        out[name.strip()] = value
    return out


def _list_named() -> int:
    from streams.forensics.named import load_named_queries

    for query in load_named_queries().values():
        print(f"{query.name}\n    {query.summary}")
        for param in query.params:
            default = "required" if param.required else f"default {param.default}"
            print(f"    --param {param.name}=<{param.type}>  {param.help} ({default})")
        print()
    return 0


def run_query(
    settings: Settings,
    sql: str | None,
    *,
    named: str | None = None,
    params: dict[str, str] | None = None,
    fmt: str = "table",
) -> bytes:
    """The result of a free or named query in one of :data:`FORMATS` (used by the CLI and tests)."""
    from streams.forensics.named import bind_params, load_named_queries
    from streams.forensics.reader import open_reader

    if fmt not in FORMATS:
        raise CadrError(f"unknown format {fmt!r} (choose from {', '.join(sorted(FORMATS))})")
    params = dict(params or {})
    if named:
        queries = load_named_queries()
        if named not in queries:
            raise CadrError(f"no named query {named!r} (known: {', '.join(sorted(queries))})")
        query = queries[named]
        bound = bind_params(query, params, database=settings.store.database)
        text = query.sql
    else:
        if not sql or not sql.strip():
            raise CadrError("give the SQL to run, or --named NAME (see --list)")
        bound = dict(params)
        text = sql
    with open_reader(settings) as reader:
        if not named:
            # Unqualified table names resolve in the cadr database.
            reader.client.database = settings.store.database
        return reader.raw(text, bound, fmt=FORMATS[fmt])


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    if args.list:
        return _list_named()
    fmt = "jsonl" if args.json else args.format
    if fmt == "parquet" and not args.output and sys.stdout.isatty():
        raise CadrError("parquet is binary: use --output FILE or redirect stdout")
    data = run_query(settings, args.sql, named=args.named, params=_parse_params(args.param), fmt=fmt)
    if fmt == "table":
        # The table is for a person: ClickHouse prints string values raw, control characters included.
        data = escape_controls(data.decode("utf-8", "replace"), keep="\n").encode("utf-8")
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0
