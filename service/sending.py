"""Sending one prepared notice: circuit breaker, rate-limit slot, send slot, lease, the
provider call, and what its answer means.

:meth:`Sender.send` runs the stages in order: :meth:`Sender._may_go` (the channel's circuit
breaker), :meth:`Sender._pace` (a rate-limit slot), :meth:`Sender._deliver` (a send slot,
the lease, the adapter call), :meth:`Sender._record_error` (a retry later, or failed).
Deferrals and retries are a later ``due_at`` in the ledger, never a sleeping task; the only
sleeps are the short waits for a rate-limit slot that was reserved.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any

from service import metrics
from service.channels.base import (
    ChannelAdapter,
    DeliveryError,
    PermanentDeliveryError,
    RenderedNotice,
    TransientDeliveryError,
    UnknownOutcomeError,
)
from service.circuit import CircuitBreaker
from service.config import Settings
from service.ledger import SqlLedger
from service.logs import get_logger
from service.ratelimit import RateLimiter
from service.reconcile import UNKNOWN

log = get_logger("dunning.dispatch")
PACING_HORIZON_S = 1.0  # claim a paced channel's notices about this far ahead of their slots
LEASE_CONFIRMED = "lease_confirmed"  # monotonic time from which the lease is known to be ours
LEASE_MARGIN_S = 5.0  # what a send's lease keeps beyond the provider timeout, for clock drift
Terminal = Callable[..., Coroutine[Any, Any, None]]  # (notice, status, reason=…, rule=…)


class Sender:
    def __init__(self, settings: Settings, ledger: SqlLedger,
                 adapters: Mapping[str, ChannelAdapter], limiter: RateLimiter,
                 now: Callable[[], datetime], owner: str, terminal: Terminal) -> None:
        self.settings = settings
        self.ledger = ledger
        self.adapters = adapters
        self.limiter = limiter
        self.now = now
        self.owner = owner
        self._terminal = terminal
        # sends in flight per channel: a notice waits here, having done no work yet, so that a
        # whole batch starting at once does not build all its requests in one loop turn
        self._sending = {channel: asyncio.Semaphore(settings.send_concurrency)
                         for channel in adapters}
        self.breakers = {channel: CircuitBreaker(channel, settings.circuit_failures,
                                                 settings.circuit_open_s)
                         for channel in adapters}

    async def send(self, notice: dict[str, Any], rendered: RenderedNotice) -> None:
        """The notice may go now: send it unless its breaker is open or no slot is near."""
        if await self._may_go(notice) and await self._pace(notice):
            await self._deliver(notice, rendered)

    async def _may_go(self, notice: dict[str, Any]) -> bool:
        """The channel's circuit breaker: while its provider keeps failing, wait, untried."""
        allowed, wait_s = self.breakers[notice["channel"]].allow()
        if not allowed:
            await self.give_back(notice, wait_s, reason="circuit_open", rule="circuit_breaker")
        return allowed

    async def _pace(self, notice: dict[str, Any]) -> bool:
        """Wait for the channel's next slot if it is near; else give the notice back."""
        ok, delay_s = await self.limiter.reserve(notice["channel"], 2 * PACING_HORIZON_S)
        if not ok:
            metrics.RATE_LIMIT_WAITS.labels(notice["channel"], "put_back").inc()
            await self.give_back(notice, delay_s, reason="rate_limited", rule="rate_limit")
            return False
        if delay_s > 0:
            metrics.RATE_LIMIT_WAITS.labels(notice["channel"], "waited").inc()
            await asyncio.sleep(delay_s)
        return True

    async def give_back(self, notice: dict[str, Any], wait_s: float, *, reason: str,
                        rule: str) -> None:
        """Back to the waiting list for ``wait_s``, untried: no attempt is used up."""
        await self.ledger.retry_later(notice, self.now() + timedelta(seconds=wait_s), self.now(),
                                      reason=reason, owner=self.owner, rule=rule,
                                      count_attempt=False)

    async def _deliver(self, notice: dict[str, Any], rendered: RenderedNotice) -> None:
        channel = notice["channel"]
        async with self._sending[channel]:
            # the window is full (after a stall somewhere): wait the time it names, not a
            # spin; admitted here, so that the start it records is the send's own
            while (wait_s := await self.limiter.admit(channel)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait_s)
            if not await self._lease_held(notice):  # after the waits: right before the call
                log.warning("lease_lost_before_send", notice_id=notice["notice_id"],
                            event_id=notice["event_id"], channel=channel)
                return
            started = time.perf_counter()
            log.debug("send_started", t=round(time.time(), 4), channel=channel)  # pacing is audited on it
            try:
                receipt = await self.adapters[channel].send(rendered)
            except DeliveryError as exc:
                self._count_failure(channel, exc)
                failure: DeliveryError | None = exc
            else:
                failure = None
                self.breakers[channel].record_success()
            finally:
                metrics.SEND_SECONDS.labels(channel).observe(time.perf_counter() - started)
        if failure is not None:  # what is written to the ledger is written outside the slot
            await self._record_error(notice, failure)
            return
        await self._terminal(notice, "sent", provider=receipt.provider,
                             provider_id=receipt.provider_id)
        log.info("notice_sent", notice_id=notice["notice_id"], event_id=notice["event_id"],
                 channel=channel, provider=receipt.provider)

    def _count_failure(self, channel: str, exc: DeliveryError) -> None:
        metrics.PROVIDER_ERRORS.labels(channel, type(exc).__name__).inc()
        if isinstance(exc, PermanentDeliveryError):
            self.breakers[channel].record_success()  # the provider answered: it is up
        else:
            self.breakers[channel].record_failure()

    async def _lease_held(self, notice: dict[str, Any]) -> bool:
        """Is the notice still ours, right before the provider call, for as long as the call
        may take?

        A worker that stalled past its lease must not send what another worker may have
        taken over, and a lease must not lapse while its send may still be in flight. While
        the lease taken at the claim (timed on the monotonic clock from before the claim, so
        a stall counts) outlasts a whole provider timeout, it surely is; otherwise the lease
        is renewed in the ledger first.
        """
        elapsed_s = time.monotonic() - notice.get(LEASE_CONFIRMED, -math.inf)
        if elapsed_s + self.settings.provider_timeout_s + LEASE_MARGIN_S < self.settings.lease_s:
            return True
        asked = time.monotonic()
        if not await self.ledger.renew_lease(notice["notice_id"], self.owner, self.now(),
                                             self.settings.lease_s):
            return False
        notice[LEASE_CONFIRMED] = asked
        return True

    async def _record_error(self, notice: dict[str, Any], exc: DeliveryError) -> None:
        fields = {"notice_id": notice["notice_id"], "event_id": notice["event_id"],
                  "channel": notice["channel"], "reason": exc.reason}
        if isinstance(exc, PermanentDeliveryError):
            log.warning("notice_failed", **fields)
            await self._terminal(notice, "failed", reason=exc.reason, rule="provider")
            return
        attempts = int(notice["attempts"])
        outage = self.breakers[notice["channel"]].state == "open"
        if attempts >= self.settings.max_attempts and not outage:
            log.warning("notice_failed_after_retries", attempts=attempts, **fields)
            await self._terminal(notice, "failed", reason=f"attempts_exhausted:{exc.reason}",
                                 rule="provider")
            return
        delay_s = self.backoff_s(attempts)
        reason = f"{UNKNOWN}:{exc.reason}" if isinstance(exc, UnknownOutcomeError) else exc.reason
        if isinstance(exc, TransientDeliveryError) and exc.retry_after_s:
            delay_s = max(delay_s, exc.retry_after_s)
            await self.limiter.slow_down(notice["channel"], exc.retry_after_s)
        log.info("notice_retry", attempts=attempts, delay_s=round(delay_s, 2), outage=outage,
                 **fields)
        # a failure the breaker puts down to a provider outage does not use up a retry
        await self.ledger.retry_later(notice, self.now() + timedelta(seconds=delay_s), self.now(),
                                      reason=reason, owner=self.owner, rule="provider",
                                      count_attempt=not outage)

    def backoff_s(self, attempts: int) -> float:
        """Exponential backoff with jitter between half and one and a half of the step."""
        step = min(self.settings.retry_base_s * 2 ** max(attempts - 1, 0),
                   self.settings.retry_max_s)
        return float(step * random.uniform(0.5, 1.5))
