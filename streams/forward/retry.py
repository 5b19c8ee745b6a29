"""Exponential backoff with jitter (pure).

Jitter spreads the retries of many forwarders (or many lanes) that failed at the same
moment, so a destination coming back is not hit by all of them at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from streams.forward.config import RetryConfig

__all__ = ["Backoff"]

_MAX_EXPONENT = 64  # 2**64 * anything already exceeds every sane max_backoff_s


@dataclass
class Backoff:
    cfg: RetryConfig = field(default_factory=RetryConfig)
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        """Largest delay after failed attempt number ``attempt`` (1-based), before jitter."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return float(min(self.cfg.max_backoff_s, self.cfg.initial_backoff_s * self.cfg.multiplier**exponent))

    def delay(self, attempt: int, *, at_least: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``; ``at_least`` is a server's Retry-After."""
        base = self.ceiling(attempt)
        value = base * (1.0 - self.cfg.jitter * self.rng.random())
        if at_least is not None:
            value = max(value, min(at_least, self.cfg.max_backoff_s * 10))
        return value
