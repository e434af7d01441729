"""Provider pacing: at most N sends begin in any sliding window, per channel.

Two mechanisms, both shared through Redis when ``DUNNING_REDIS_URL`` is set:

1. Spacing (GCRA with a burst of one): each send reserves the slot one interval (window / N)
   after the previous one, so a backlog flows evenly instead of in bursts, and a send whose
   slot is far off is given back to the ledger instead of holding its lease.
2. The guarantee (a sliding log of actual starts): right before the provider call, a start is
   admitted only if fewer than N were admitted in the last window (plus a small margin for
   network jitter). A worker whose event loop stalled cannot catch up in a burst.

Redis runs each step as one atomic Lua script on its own clock; if Redis cannot be reached,
pacing falls back to this process alone and says so in logs and metrics.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from service import metrics
from service.logs import get_logger

log = get_logger("dunning.ratelimit")
REDIS_RETRY_S = 5.0  # after a Redis failure, how long to pace locally before trying again
KEY_PREFIX = "dunning:rate:"
JITTER_MARGIN_FRACTION = 0.04  # a window is guarded this much longer against network jitter …
JITTER_MARGIN_S = 0.05  # … but never more than this

# KEYS[1] = slot key; ARGV = interval_us, max_wait_us, pause_us (0: reserve a slot)
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
if tonumber(ARGV[3]) > 0 then
  local until_ = math.max(tat, now + tonumber(ARGV[3]))
  redis.call('SET', KEYS[1], string.format('%d', until_), 'PX', math.ceil((until_ - now) / 1000) + 1000)
  return {1, 0}
end
local start = math.max(now, tat)
if start - now > tonumber(ARGV[2]) then return {0, start - now} end
local nxt = start + interval
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
return {1, start - now}
"""


# KEYS[1] = log key; ARGV = window_us, max_starts, member; returns 0 (admitted) or wait_us
_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return math.max(oldest + window - now, 1)
"""


@dataclass(frozen=True, slots=True)
class Rate:
    max_starts: float
    window_s: float

    @property
    def interval_s(self) -> float:
        """The spacing of slots: the guarded window shared evenly, so that steady pacing
        never runs into the sliding log, which then only acts after a stall."""
        return self.guard_window_s / self.max_starts

    @property
    def guard_window_s(self) -> float:
        """The window the sliding log enforces: a little longer than the provider's, so
        network jitter between here and the provider cannot push N + 1 into its window."""
        return self.window_s + min(JITTER_MARGIN_FRACTION * self.window_s, JITTER_MARGIN_S)


class RateLimiter(Protocol):
    def rate(self, channel: str) -> Rate | None: ...

    async def reserve(self, channel: str, max_wait_s: float) -> tuple[bool, float]:
        """(True, delay): start after ``delay`` s. (False, wait): nothing reserved; try after."""
        ...

    async def slow_down(self, channel: str, pause_s: float) -> None:
        """No start on ``channel`` for ``pause_s`` seconds (a provider's Retry-After)."""
        ...

    async def admit(self, channel: str) -> float:
        """Record a start now if the window has room and return 0; else the seconds to wait."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class LocalRateLimiter:
    """Slots in this process only: right for one worker, and the fallback for several."""

    rates: dict[str, Rate]
    _tat: dict[str, float] = field(default_factory=dict)
    _starts: dict[str, deque[float]] = field(default_factory=dict)

    def rate(self, channel: str) -> Rate | None:
        return self.rates.get(channel)

    async def reserve(self, channel: str, max_wait_s: float) -> tuple[bool, float]:
        rate = self.rates.get(channel)
        now = time.monotonic()
        start = max(now, self._tat.get(channel, 0.0))  # a pause applies to unpaced channels too
        if start - now > max_wait_s:
            return False, start - now
        if rate is not None:
            self._tat[channel] = start + rate.interval_s
        return True, start - now

    async def slow_down(self, channel: str, pause_s: float) -> None:
        self._tat[channel] = max(self._tat.get(channel, 0.0), time.monotonic() + pause_s)

    async def admit(self, channel: str) -> float:
        rate = self.rates.get(channel)
        if rate is None:
            return 0.0
        now = time.monotonic()
        starts = self._starts.setdefault(channel, deque())
        while starts and starts[0] <= now - rate.guard_window_s:
            starts.popleft()
        if len(starts) < rate.max_starts:
            starts.append(now)
            return 0.0
        return max(starts[0] + rate.guard_window_s - now, 0.001)

    async def aclose(self) -> None:
        return None


class RedisRateLimiter:
    """Slots shared by every worker through Redis; local pacing while Redis is away."""

    def __init__(self, url: str, rates: dict[str, Rate], namespace: str = "") -> None:
        import redis.asyncio as aioredis

        self.rates = rates
        self.prefix = f"{KEY_PREFIX}{namespace}:" if namespace else KEY_PREFIX
        self.local = LocalRateLimiter(rates)
        self._redis: Any = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._redis.register_script(_GCRA)
        self._log = self._redis.register_script(_LOG)
        self._down_until = 0.0

    def rate(self, channel: str) -> Rate | None:
        return self.rates.get(channel)

    async def _call(self, channel: str, max_wait_s: float, pause_s: float) -> tuple[bool, float]:
        rate = self.rates[channel]
        ok, delay_us = await self._script(keys=[self.prefix + channel], args=[
            math.ceil(rate.interval_s * 1e6), math.ceil(max_wait_s * 1e6),
            math.ceil(pause_s * 1e6)])
        return bool(ok), int(delay_us) / 1e6

    async def _shared(self, channel: str, max_wait_s: float,
                      pause_s: float) -> tuple[bool, float] | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            result = await self._call(channel, max_wait_s, pause_s)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: pace locally, say so
            self._redis_failed(exc)
            return None
        metrics.RATE_LIMIT_DEGRADED.set(0)
        return result

    async def reserve(self, channel: str, max_wait_s: float) -> tuple[bool, float]:
        if channel not in self.rates:
            return await self.local.reserve(channel, max_wait_s)
        shared = await self._shared(channel, max_wait_s, 0.0)
        return shared if shared is not None else await self.local.reserve(channel, max_wait_s)

    async def slow_down(self, channel: str, pause_s: float) -> None:
        if channel not in self.rates or await self._shared(channel, 0.0, pause_s) is None:
            await self.local.slow_down(channel, pause_s)

    async def admit(self, channel: str) -> float:
        rate = self.rates.get(channel)
        if rate is None or time.monotonic() < self._down_until:
            return await self.local.admit(channel)
        try:
            wait_us = await self._log(keys=[f"{self.prefix}{channel}:log"], args=[
                math.ceil(rate.guard_window_s * 1e6), int(rate.max_starts),
                uuid.uuid4().hex])
        except Exception as exc:  # noqa: BLE001 - any Redis failure: pace locally, say so
            self._redis_failed(exc)
            return await self.local.admit(channel)
        return int(wait_us) / 1e6

    def _redis_failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + REDIS_RETRY_S
        metrics.RATE_LIMIT_DEGRADED.set(1)
        log.warning("rate_limit_redis_unavailable", error=type(exc).__name__,
                    setting="DUNNING_REDIS_URL", fallback="in-process limits")

    async def aclose(self) -> None:
        await self._redis.aclose()


def make_limiter(redis_url: str | None, rates: dict[str, Rate], namespace: str = "") -> RateLimiter:
    """Workers with the same ``namespace`` (the queue they consume) share their slots."""
    return RedisRateLimiter(redis_url, rates, namespace) if redis_url else LocalRateLimiter(rates)
