"""The ``cadr`` command line.

Each command lives in its own module under ``cadr.commands`` and exposes
``register(subparsers)``; the handler receives the parsed args and the one
:class:`~schemas.settings.Settings` built here (defaults < TOML < CADR_* env < flags).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from cadr.config import load_settings
from schemas.errors import CadrError
from schemas.text import escape_controls

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: command modules in the order ``cadr --help`` lists them
COMMAND_MODULES = [
    "demo",
    "up",
    "worker",
    "sensor",
    "incidents",
    "query",
    "capture",
    "replay",
    "scan",
    "hunt",
    "rules",
    "profiles",
    "forward",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cadr",
        description=(
            "cadr: runtime detection and response for Kubernetes. Sensors (eBPF, audit) publish to Kafka; "
            "a Faust worker enriches, baselines, detects and correlates alerts into incident stories; "
            "ClickHouse keeps every event for forensic SQL."
        ),
        epilog="Configuration: --config FILE (TOML) or $CADR_CONFIG, overridden by CADR_<SECTION>_<FIELD> variables.",
    )
    parser.add_argument("--config", help="TOML configuration file (default: $CADR_CONFIG or ./cadr.toml)")
    parser.add_argument("--data-dir", help="state directory for the embedded stack (default: ./.cadr)")
    parser.add_argument("--kafka", help="Kafka bootstrap servers (default: start the embedded local broker)")
    parser.add_argument("--topic-prefix", help="topic name prefix (default: cadr.)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cadr.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cadr.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


class _SafeFormatter(logging.Formatter):
    """Log lines with wire text in them (a user name, a path, a peer's reply) escaped for the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei), keep="\n")


def main(argv: Sequence[str] | None = None) -> int:
    # Everything cadr writes (the event store, spools, Kafka data of the embedded stack, generated keys and
    # tokens, captures) is for its owner only: files 0600, directories 0700.
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config)
        if args.data_dir:
            settings.data_dir = args.data_dir
        if args.kafka:
            settings.kafka.bootstrap = args.kafka
        if args.topic_prefix:
            settings.kafka.topic_prefix = args.topic_prefix
        result: int = args.handler(args, settings)
        return result
    except CadrError as exc:
        print(escape_controls(f"cadr: error: {exc}", keep="\n"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
