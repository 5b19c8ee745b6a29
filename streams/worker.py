"""The worker: the stages it runs, wired explicitly into one Faust app.

Each stage module adds its agents with ``register(cadr_app)``; this module imports them and
names them, in data-path order. ``worker.agents`` (``cadr worker --agents``) picks a subset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas.settings import ConfigError, Settings
from streams import correlate, detect, enrich, profiles, store
from streams.app import CadrApp, build_app

__all__ = ["STAGES", "Stage", "create_app"]

#: adds a stage's agents (and its object under ``cadr_app.stages``) to the app
Stage = Callable[[CadrApp], None]

#: the stages in data-path order. ``profiles`` applies edits through the detect stage's baselines,
#: so it comes after ``detect``.
STAGES: Mapping[str, Stage] = {
    "enrich": enrich.register,
    "detect": detect.register,
    "profiles": profiles.register,
    "correlate": correlate.register,
    "store": store.register,
}


def create_app(settings: Settings, stages: Sequence[str] | None = None, **overrides: Any) -> CadrApp:
    """Build the Faust app for ``settings`` (:func:`streams.app.build_app`, which ``overrides`` go to) and
    register the stages ``worker.agents`` names, else ``stages``, else all of them.

    Raises:
        ConfigError: a stage name is not one of :data:`STAGES`.
    """
    names = list(settings.worker.agents or stages or STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(f"unknown worker stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    cadr_app = build_app(settings, **overrides)
    for name in names:
        STAGES[name](cadr_app)
    return cadr_app
