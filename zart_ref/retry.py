"""Retry policies: how long to wait before the next attempt, or whether to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .moments import check_delay

Backoff = Literal["fixed", "linear", "exponential"]


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts every claim of the task; the delay runs on the database clock."""

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    base_delay: float = 1.0
    max_delay: float = 300.0
    # Fraction of the delay added or removed at random so retries of a burst spread out.
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff not in ("fixed", "linear", "exponential"):
            raise ConfigError(
                f"RetryPolicy.backoff must be fixed, linear or exponential, got {self.backoff!r}"
            )
        for key in ("base_delay", "max_delay"):
            check_delay(getattr(self, key), what=f"RetryPolicy.{key}", error=ConfigError)
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}")

    def delay_for(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """Seconds before attempt ``attempt + 1``, or None when ``attempt`` was the last."""
        if attempt >= self.max_attempts:
            return None
        if self.backoff == "fixed":
            delay = self.base_delay
        elif self.backoff == "linear":
            delay = self.base_delay * attempt
        else:
            # 2.0 ** 1000 still fits a float; any larger exponent is past max_delay anyway.
            delay = self.base_delay * 2.0 ** min(attempt - 1, 1000)
        delay = min(delay, self.max_delay)
        if self.jitter:
            spread = delay * self.jitter
            delay += (rng or random).uniform(-spread, spread)
        return max(delay, 0.0)


NO_RETRY = RetryPolicy(max_attempts=1)
