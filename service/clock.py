"""The worker's notion of now: aware UTC, shifted by DUNNING_CLOCK_OFFSET_S for rehearsals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def make_clock(offset_s: float = 0.0) -> Callable[[], datetime]:
    offset = timedelta(seconds=offset_s)

    def now() -> datetime:
        return datetime.now(UTC) + offset

    return now
