"""The worker's wiring: which stages an app gets, named explicitly (no Kafka is contacted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.settings import ConfigError
from streams.worker import STAGES, create_app
from tests.pipeline_harness import make_settings


def _agents(app: object) -> set[str]:
    return {a.name for a in app.agents.values()}  # type: ignore[attr-defined]


def test_all_stages_by_default(tmp_path: Path) -> None:
    cadr_app = create_app(make_settings("127.0.0.1:9", "t.", tmp_path))
    assert list(STAGES) == ["enrich", "detect", "profiles", "correlate", "store"]
    assert set(cadr_app.stages) == set(STAGES)
    assert {"cadr.enrich", "cadr.detect", "cadr.profile-edits", "cadr.correlate"} <= _agents(cadr_app.app)


def test_worker_agents_pick_a_subset(tmp_path: Path) -> None:
    settings = make_settings("127.0.0.1:9", "t.", tmp_path)
    settings.worker.agents = ["enrich", "detect"]
    cadr_app = create_app(settings, stages=["store"])  # the setting wins over the caller's default
    assert set(cadr_app.stages) == {"enrich", "detect"}
    assert _agents(cadr_app.app) == {"cadr.enrich", "cadr.detect"}


def test_an_unknown_stage_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings("127.0.0.1:9", "t.", tmp_path)
    settings.worker.agents = ["enrich", "enrichh"]
    with pytest.raises(ConfigError, match=r"unknown worker stage\(s\) enrichh \(known: enrich, detect"):
        create_app(settings)
