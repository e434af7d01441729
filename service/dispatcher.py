"""The dispatcher: claims due notices and runs each through rules, render, pacing, send, record.

It claims batches within its budgets (:meth:`Dispatcher._budgets`), prepares each batch
together (:mod:`service.prepare`) or a notice alone (:meth:`Dispatcher._prepare`: a
reconciliation first, a payment's confirmation), and hands what may go now to the
:class:`~service.sending.Sender`, one task per notice.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from service import metrics
from service.channels.base import (
    ChannelAdapter,
    DeliveryError,
    RenderedNotice,
)
from service.compose import Composer, EventCache, NotSendable
from service.config import Settings
from service.events import AnyEvent
from service.ledger import SqlLedger
from service.ledger.contacts import decide_contact
from service.ledger.recorder import Recorder
from service.logs import get_logger
from service.policy import Policy
from service.prepare import BatchPreparer, Prepared
from service.ratelimit import LocalRateLimiter, RateLimiter
from service.reconcile import UNKNOWN, needs_reconciling, reconcile
from service.rendering import Renderer
from service.rules import check_timing, destination_for, evaluate
from service.sending import LEASE_CONFIRMED, PACING_HORIZON_S, Sender

log = get_logger("dunning.dispatch")


class Dispatcher:
    def __init__(self, settings: Settings, ledger: SqlLedger, policy: Policy, renderer: Renderer,
                 adapters: Mapping[str, ChannelAdapter], now: Callable[[], datetime],
                 on_decided: Callable[[], None], limiter: RateLimiter | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.composer = Composer(policy, renderer)
        self.adapters = adapters
        self.now = now
        self.on_decided = on_decided
        self.limiter = limiter or LocalRateLimiter({})
        self.owner = f"w-{uuid.uuid4().hex[:12]}"
        self.events = EventCache(ledger)
        self.recorder = Recorder(ledger, self.owner)
        self.preparer = BatchPreparer(self.composer, self.events, ledger, self._terminal,
                                      self.owner, settings.lease_s)
        self.wake = asyncio.Event()
        self._room = asyncio.Event()  # set when a whole batch may be claimed again
        self._inflight: set[asyncio.Task[None]] = set()
        self._by_channel: Counter[str] = Counter()
        self._stopping = False
        self.max_inflight = settings.dispatch_batch * 2
        self.sender = Sender(settings, ledger, adapters, self.limiter, now, self.owner,
                             self._terminal)

    # ---- the loop --------------------------------------------------------------------------

    def _budgets(self) -> list[tuple[list[str] | None, int, bool]]:
        """What to claim this round: paced channels up to their horizon, the rest together;
        (channels, budget, paced)."""
        free = self.max_inflight - len(self._inflight)
        paced = {c: r for c in self.adapters if (r := self.limiter.rate(c)) is not None}
        plan: list[tuple[list[str] | None, int, bool]] = []
        for channel, rate in paced.items():
            ahead = math.ceil(PACING_HORIZON_S / rate.interval_s) + 1
            plan.append(([channel], min(free, ahead - self._by_channel[channel]), True))
        unpaced = [c for c in self.adapters if c not in paced]
        plan.append((unpaced if paced else None, min(free, self.settings.dispatch_batch), False))
        return [(channels, budget, p) for channels, budget, p in plan if budget > 0]

    async def run(self) -> None:
        while not self._stopping:
            self.wake.clear()  # a wake that arrives from here on is seen by _idle below
            full = backlog = False
            for channels, budget, paced in self._budgets():
                asked = time.monotonic()  # the lease runs from no later than this
                try:
                    claimed = await self.ledger.claim(self.owner, self.now(), budget,
                                                      self.settings.lease_s, channels)
                except Exception as exc:  # noqa: BLE001 - ledger down: nothing is sent, retry
                    metrics.LEDGER_ERRORS.labels("claim").inc()
                    log.error("claim_failed", error=str(exc).splitlines()[0],
                              setting="DUNNING_DATABASE_URL")
                    await asyncio.sleep(1.0)
                    break
                full = full or len(claimed) == budget
                backlog = backlog or (len(claimed) == budget and not paced)
                for notice in claimed:
                    notice[LEASE_CONFIRMED] = asked
                if claimed:  # tracked, so that a drain waits for the batch it is preparing
                    launch = asyncio.create_task(self._launch(claimed))
                    self._track(launch, None)
                    await launch
            if backlog and self._has_room():
                continue  # more unpaced notices are due: claim the next batch at once
            await self._idle(PACING_HORIZON_S / 4 if full else self.settings.dispatch_poll_s)

    def recorded(self, events: list[AnyEvent]) -> None:
        """The intake committed these new events: keep them as parsed, and look for work."""
        self.events.remember(events)
        self.wake.set()

    def _has_room(self) -> bool:
        """Room for a whole batch: claiming one notice per finished send batches nothing."""
        return len(self._inflight) <= self.max_inflight - self.settings.dispatch_batch

    async def _launch(self, claimed: list[dict[str, Any]]) -> None:
        """Prepare the batch together, then send each notice on its own task."""
        try:
            prepared = await self.preparer.prepare(claimed, self.now())
        except Exception:
            # nothing was let go: the leases expire and the notices are claimed again
            log.exception("batch_crashed", notices=len(claimed))
            await asyncio.sleep(1.0)
            return
        self._spawn_all(prepared)

    def _spawn_all(self, prepared: Prepared) -> None:
        if prepared.decided:  # their outcomes were written with the batch's decisions
            self.on_decided()
        for closing in prepared.closing:
            self._track(asyncio.create_task(self._closing(closing)), None)
        for notice, rendered in prepared.ready:
            self._start(notice, rendered)
        for notice in prepared.one_by_one:
            self._start(notice)

    async def _closing(self, write: Any) -> None:
        try:
            await write
        except Exception:
            log.exception("decision_not_recorded")
        finally:
            self.on_decided()

    def _start(self, notice: dict[str, Any], rendered: RenderedNotice | None = None) -> None:
        self._track(asyncio.create_task(self._handle(notice, rendered)), notice["channel"])

    def _track(self, task: asyncio.Task[None], channel: str | None) -> None:
        if channel is not None:
            self._by_channel[channel] += 1
        self._inflight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._inflight.discard(finished)
            if channel is not None:
                self._by_channel[channel] -= 1
            if self._has_room():
                self._room.set()
        task.add_done_callback(done)

    async def _idle(self, timeout_s: float) -> None:
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        if not self._has_room():
            self._room.clear()
            waiters.append(asyncio.ensure_future(self._room.wait()))
        _, pending = await asyncio.wait(waiters, timeout=timeout_s,
                                        return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def drain(self, timeout_s: float) -> int:
        """Stop claiming, let in-flight sends finish, give back what was not started."""
        self._stopping = True
        self.wake.set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        # again until none is left: a batch being prepared starts its sends on new tasks
        while self._inflight and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._inflight), timeout=left)
        released = await self.ledger.release(self.owner, self.now())
        await self.recorder.aclose()
        return released

    # ---- one notice ------------------------------------------------------------------------

    async def _handle(self, notice: dict[str, Any], ready: RenderedNotice | None = None) -> None:
        """One notice: prepared here unless the batch stage has (``ready``), then sent."""
        try:
            rendered = ready or await self._prepare(notice)
            if rendered is not None:
                await self.sender.send(notice, rendered)
        except NotSendable as exc:
            await self._terminal(notice, "failed", reason=exc.reason, rule=exc.rule)
        except Exception:
            log.exception("notice_crashed", notice_id=notice["notice_id"],
                          event_id=notice["event_id"], channel=notice["channel"])
        finally:
            self.on_decided()

    async def _prepare(self, notice: dict[str, Any]) -> RenderedNotice | None:
        found = await self.events.context(notice)
        if found is None:
            await self._terminal(notice, "failed", reason="event_missing", rule="ledger")
            return None
        event, escalation = found
        destination = destination_for(notice["channel"], escalation.debtor.model_dump())
        now = self.now()
        rendered = None
        if destination.value is not None:
            rendered = self.composer.render(notice, event, escalation, destination.value, now)
            if needs_reconciling(notice) and await self._reconciled(notice, rendered):
                return None
        holds = await self.ledger.active_holds([notice["account_id"]])
        opted = destination.value is not None and bool(await self.ledger.opted_out(
            [(notice["channel"], destination.value)]))
        decision = evaluate(hold_reason=holds.get(notice["account_id"]),
                            destination=destination, opted_out=opted)
        if not decision.sends:
            await self._terminal(notice, "suppressed", reason=decision.reason, rule=decision.rule)
            return None
        assert destination.value is not None and rendered is not None
        subject = self.composer.subject(notice, escalation, destination.value)
        rules = self.composer.rules(escalation, notice["channel"])
        verdict = await decide_contact(
            self.ledger, notice, destination.value,
            lambda history: check_timing(rules, subject, history, now), now, self.owner,
            self.settings.lease_s)
        if not verdict.sends:
            metrics.NOTICES.labels(notice["channel"], _status(verdict.verdict),
                                   verdict.reason or "").inc()
            return None
        return rendered

    async def _reconciled(self, notice: dict[str, Any], rendered: RenderedNotice) -> bool:
        """True if an earlier attempt did reach the provider (now recorded as sent)."""
        try:
            receipt = await reconcile(self.ledger, self.adapters[notice["channel"]], notice,
                                      rendered, self.now(), self.settings.clock_offset_s)
        except DeliveryError as exc:  # the provider cannot be asked: never send blind
            await self.sender.give_back(notice, self.sender.backoff_s(1),
                                        reason=f"{UNKNOWN}:{exc.reason}", rule="reconcile")
            return True
        if receipt is None:
            return False
        await self._terminal(notice, "sent", reason="reconciled", rule="reconcile",
                             provider=receipt.provider, provider_id=receipt.provider_id)
        log.info("notice_reconciled", notice_id=notice["notice_id"], channel=notice["channel"],
                 event_id=notice["event_id"])
        return True

    async def _terminal(self, notice: dict[str, Any], status: Any, **extra: Any) -> None:
        done = await self.recorder.finish(notice, status, self.now(), **extra)
        if not done:
            log.warning("lease_lost", notice_id=notice["notice_id"], status=status)
            return
        metrics.NOTICES.labels(notice["channel"], status, extra.get("reason") or "").inc()


def _status(verdict: str) -> str:
    return {"defer": "deferred", "suppress": "suppressed"}.get(verdict, verdict)
