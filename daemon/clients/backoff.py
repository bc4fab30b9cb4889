"""How long to wait before trying a failed service again: exponential back-off with jitter.

One policy for everything the daemon retries by itself (the background probes of a service
marked down, the ``asr`` wake engine's reconnects). The jitter spreads the retries of robots
that lost the same server at the same moment, so that they do not all knock again in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """``first_s``, doubling (``factor``) up to ``max_s``; each delay moved by up to +-``jitter``
    of itself (0.2: +-20 %)."""

    first_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"Backoff needs 0 < first_s <= max_s, got {self.first_s} and {self.max_s}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"Backoff needs factor >= 1 and 0 <= jitter < 1, got {self.factor} and {self.jitter}")

    def delays(self, uniform: Callable[[], float] = random.random) -> Iterator[float]:
        """The waits before the 1st, 2nd, ... retry (endless). ``uniform``: a number in [0, 1)."""
        delay = self.first_s
        while True:
            yield delay * (1 + self.jitter * (2 * uniform() - 1))
            delay = min(delay * self.factor, self.max_s)
