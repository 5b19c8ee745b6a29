"""Health of the worker's agents: what each processed, how often it crashed, whether the worker is ready.

Faust restarts a crashed agent at once and says so in one log line; an agent that fails on every record
restarts forever while no story is ever told (seen live: the correlate agent crash-looped through a whole
run). Each agent here reports progress after every record or batch it finished and every crash (Faust's
``on_error`` hook); an agent that crashed :data:`FAIL_AFTER` times with no finished record in between is
*failed*, and a worker with a failed agent is not ready. The crash is logged at ERROR with the agent's
name and the reason each time, never only as a restart. A finished record clears the failure (the fault
was transient); the total count of crashes stays.

:class:`HealthRegistry` is the one place readiness is decided: the worker's health page
(``/cadr/health`` on Faust's web server when ``worker.web_enabled``) serves :meth:`HealthRegistry.snapshot`,
and status commands and probes build on it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["FAIL_AFTER", "AgentHealth", "HealthRegistry"]

log = logging.getLogger(__name__)

#: crashes in a row (no finished record in between) that fail an agent and the worker's readiness
FAIL_AFTER = 2


@dataclass
class AgentHealth:
    """One agent's (or timer's) counters."""

    name: str
    processed: int = 0
    crashes: int = 0
    consecutive_crashes: int = 0
    last_error: str = ""
    last_crash: float = 0.0
    last_progress: float = 0.0

    @property
    def failed(self) -> bool:
        return self.consecutive_crashes >= FAIL_AFTER

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "crashes": self.crashes,
            "consecutive_crashes": self.consecutive_crashes,
            "failed": self.failed,
            "last_error": self.last_error,
            "last_crash": self.last_crash,
            "last_progress": self.last_progress,
        }


class HealthRegistry:
    """Every agent's health; thread-safe (the web page and status readers run beside the agents)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, AgentHealth] = {}
        #: a stage's counters (evictions, folds ...), shown in :meth:`snapshot`: stage -> live dict
        self.metrics: dict[str, dict[str, int]] = {}

    def register(self, name: str) -> AgentHealth:
        with self._lock:
            return self._agents.setdefault(name, AgentHealth(name))

    def progress(self, name: str, n: int = 1) -> None:
        """``name`` finished ``n`` records (call after each record or batch)."""
        agent = self._agents.get(name) or self.register(name)
        agent.processed += n
        agent.last_progress = time.time()
        if agent.consecutive_crashes:
            if agent.failed:
                log.warning(
                    "agent %s processes records again after %d crashes", name, agent.consecutive_crashes
                )
            agent.consecutive_crashes = 0

    def crashed(self, name: str, exc: BaseException) -> None:
        """``name`` raised ``exc`` (Faust restarts it); logged at ERROR every time."""
        agent = self._agents.get(name) or self.register(name)
        agent.crashes += 1
        agent.consecutive_crashes += 1
        agent.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        agent.last_crash = time.time()
        if agent.failed:
            log.error(
                "agent %s FAILED: %d crashes in a row (latest: %s); the worker is not ready",
                name,
                agent.consecutive_crashes,
                agent.last_error,
            )
        else:
            log.error("agent %s crashed (%s); restarting it", name, agent.last_error)

    def ready(self) -> bool:
        """True when no agent is failed."""
        return not any(a.failed for a in list(self._agents.values()))

    def snapshot(self) -> dict[str, Any]:
        """``{"ready": bool, "agents": {name: counters}, "metrics": {stage: counters}}`` (JSON-ready)."""
        agents = {name: a.as_dict() for name, a in sorted(list(self._agents.items()))}
        metrics = {name: dict(counters) for name, counters in sorted(list(self.metrics.items()))}
        return {"ready": not any(a["failed"] for a in agents.values()), "agents": agents, "metrics": metrics}
