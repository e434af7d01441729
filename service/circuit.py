"""A circuit breaker per channel: stop hammering a provider that keeps failing, probe it back.

closed ──(N transient failures in a row)──► open ──(open_s later)──► half-open: one probe
   ▲                                           ▲                          │
   └────────────── probe succeeds ─────────────┼──────── probe fails ─────┘ (open again)

While open, notices are given back to the ledger (due when the breaker will probe), without
counting an attempt: a provider outage does not use up a notice's retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service import metrics
from service.logs import get_logger

log = get_logger("dunning.circuit")


@dataclass
class CircuitBreaker:
    channel: str
    failures_to_open: int = 5
    open_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: str = "closed"
    failures: int = 0
    _opened_at: float = 0.0
    _open_for_s: float = field(default=0.0)
    _probing: bool = False

    def allow(self) -> tuple[bool, float]:
        """(True, 0) to go ahead; (False, seconds) to come back later."""
        if self.state == "closed":
            return True, 0.0
        remaining = self._opened_at + self._open_for_s - self.clock()
        if self.state == "open" and remaining > 0:
            return False, remaining
        if self._probing:
            return False, min(self.open_s, 1.0)
        self._move("half_open")
        self._probing = True
        return True, 0.0

    def record_success(self) -> None:
        self.failures = 0
        self._probing = False
        if self.state != "closed":
            self._move("closed")

    def record_failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state == "half_open":
            self._open(self.open_s)
        elif self.state == "closed" and self.failures >= self.failures_to_open:
            self._open(self.open_s)

    def _open(self, for_s: float) -> None:
        self._opened_at = self.clock()
        self._open_for_s = for_s
        self._move("open")

    def _move(self, state: str) -> None:
        self.state = state
        metrics.CIRCUIT_OPEN.labels(self.channel).set(1 if state == "open" else 0)
        metrics.CIRCUIT_TRANSITIONS.labels(self.channel, state).inc()
        log.warning("circuit_" + state, channel=self.channel, failures=self.failures,
                    open_s=round(self._open_for_s, 1) if state == "open" else None)
