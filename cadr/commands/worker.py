"""``cadr worker``: the Faust worker running the stream stages."""

from __future__ import annotations

import argparse
import logging
import sys

from schemas.settings import Settings

__all__ = ["register", "run_worker"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run the stream worker (enrich, detect, correlate, store)",
        description=(
            "Run the Faust worker with all stages (enrich, detect, correlate, store) or those named. "
            "Needs --kafka (or CADR_KAFKA_BOOTSTRAP); without it an embedded broker is started under --data-dir."
        ),
    )
    p.add_argument(
        "--agents",
        help="comma-separated stages to run (default: all: enrich,detect,profiles,correlate,store)",
    )
    p.add_argument(
        "--web", action="store_true", help="enable Faust's web server (binds 127.0.0.1:6066 by default)"
    )
    p.set_defaults(handler=_handle)


def run_worker(settings: Settings) -> int:
    """Run the worker until SIGINT/SIGTERM (blocking)."""
    import faust

    from cadr.runtime import ensure_topics_sync, relax_cyclic_gc
    from streams.worker import create_app

    relax_cyclic_gc()
    ensure_topics_sync(settings)
    cadr_app = create_app(settings)
    level = logging.getLogger().getEffectiveLevel()
    worker = faust.Worker(
        cadr_app.app,
        loglevel=logging.getLevelName(level).lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.execute_from_commandline()
    return 0


def _handle(args: argparse.Namespace, settings: Settings) -> int:
    from cadr.runtime import embedded_kafka

    if args.agents:
        settings.worker.agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    if args.web:
        settings.worker.web_enabled = True
    print(f"cadr worker: stages {settings.worker.agents or 'all'}", file=sys.stderr)
    with embedded_kafka(settings):
        return run_worker(settings)
