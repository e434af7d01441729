"""The rate limiters, in-process and on the real Redis: at most N starts in any sliding window,
for one limiter and for two sharing Redis; a stall never turns into a burst."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from service.ratelimit import LocalRateLimiter, Rate, RateLimiter, RedisRateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE = Rate(max_starts=10, window_s=0.5)


async def start_many(limiter: RateLimiter, count: int, log: list[float]) -> None:
    """What the dispatcher does for each send: reserve a slot, wait for it, be admitted."""
    async def one() -> None:
        while True:
            ok, delay_s = await limiter.reserve("sms", 0.5)
            if ok:
                break
            await asyncio.sleep(delay_s)
        await asyncio.sleep(delay_s)
        while (wait_s := await limiter.admit("sms")) > 0:  # noqa: ASYNC110 - the limiter's API
            await asyncio.sleep(wait_s)
        log.append(time.monotonic())
    await asyncio.gather(*(one() for _ in range(count)))


def most_in_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.fixture(params=["local", "redis"])
async def limiters(request: pytest.FixtureRequest) -> AsyncIterator[list[RateLimiter]]:
    if request.param == "local":
        yield [LocalRateLimiter({"sms": RATE})]
        return
    namespace = uuid.uuid4().hex
    made: list[RateLimiter] = [RedisRateLimiter(REDIS_URL, {"sms": RATE}, namespace)
                               for _ in range(2)]
    yield made
    for limiter in made:
        await limiter.aclose()


async def test_never_more_than_n_starts_in_any_window(limiters: list[RateLimiter]) -> None:
    log: list[float] = []
    await asyncio.gather(*(start_many(limiter, 30, log) for limiter in limiters))
    assert len(log) == 30 * len(limiters)
    assert most_in_window(log, RATE.window_s) <= RATE.max_starts
    span_s = max(log) - min(log)
    # a steady backlog is spaced evenly: the starts take about as long as the rate says
    assert span_s >= (len(log) - RATE.max_starts) * RATE.window_s / RATE.max_starts


async def test_a_stalled_caller_does_not_catch_up_in_a_burst() -> None:
    limiter = LocalRateLimiter({"sms": RATE})
    log: list[float] = []
    await start_many(limiter, 10, log)
    time.sleep(0.2)  # noqa: ASYNC251 - the stall being simulated: the loop is blocked
    await start_many(limiter, 10, log)
    assert most_in_window(log, RATE.window_s) <= RATE.max_starts


async def test_a_retry_after_pauses_the_channel() -> None:
    limiter = LocalRateLimiter({})
    await limiter.slow_down("sms", 5.0)
    ok, wait_s = await limiter.reserve("sms", 1.0)
    assert not ok and 4.0 < wait_s <= 5.0
    assert (await limiter.reserve("email", 1.0))[0]


async def test_redis_down_falls_back_to_local_pacing() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", {"sms": RATE}, "down")
    try:
        log: list[float] = []
        await start_many(limiter, 15, log)
        assert most_in_window(log, RATE.window_s) <= RATE.max_starts
    finally:
        await limiter.aclose()
    from service.metrics import RATE_LIMIT_DEGRADED
    assert RATE_LIMIT_DEGRADED._value.get() == 1
