"""Exponential backoff with full jitter (AWS's "full jitter"): pure, so it is tested with a fake random."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Backoff:
    """Delay before retry ``n`` (0-based) is ``uniform(0, min(cap, base * 2**n))``.

    ``max_attempts`` failures in a row (``None``: unlimited) exhaust it: :meth:`next`
    then returns ``None`` and the caller gives up (the client goes ``failed``).
    """

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int | None = 10
    random: Callable[[], float] = field(default=_random.random, repr=False)
    attempt: int = 0

    def ceiling(self, attempt: int) -> float:
        # min() before the power would overflow on a long outage
        return min(self.cap, self.base * 2 ** min(attempt, 64))

    def next(self) -> float | None:
        """The delay before the next attempt, or ``None`` when the attempts are used up."""
        if self.max_attempts is not None and self.attempt >= self.max_attempts:
            return None
        delay = self.random() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Pacer:
    """A token bucket for the outbox: keeps a drain under the server's request rate limit.

    A write the server refuses with ``rate_limited`` inside a pipelined batch could
    be overtaken by a later write of that batch that got through; staying under
    the limit (server default: 100/s per connection, burst 200) avoids that.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = float(burst), clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, wanted: int) -> tuple[int, float]:
        """``(granted, wait)``: how many sends may go now, else how long until one may."""
        self._refill()
        if self.tokens < 1:
            return 0, (1 - self.tokens) / self.rate
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted, 0.0
