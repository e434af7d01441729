"""The dispatcher: claims due notices and runs each through rules, render, send and record.

Small named stages: :meth:`Dispatcher._prepare` (what to send and whether it may go),
:meth:`Dispatcher._deliver` (the adapter call), :meth:`Dispatcher._record_error` (what an
error means for the notice). Retries are a later ``due_at`` in the ledger, never a sleep.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from service.channels.base import (
    Address,
    ChannelAdapter,
    DeliveryError,
    PermanentDeliveryError,
    RenderedNotice,
    TransientDeliveryError,
)
from service.config import Settings
from service.events import AnyEvent, Escalated, PaymentReceived, validate_event
from service.ledger import SqlLedger
from service.logs import get_logger
from service.policy import Policy
from service.rendering import Renderer, RenderInput, sms_segments
from service.rules import destination_for, evaluate

log = get_logger("dunning.dispatch")


class NotSendable(Exception):
    """A notice that can never go: template broken, SMS over budget, …"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Prepared:
    notice: dict[str, Any]
    rendered: RenderedNotice


class EventCache:
    """Parsed events by id, so no notice re-parses its event."""

    def __init__(self, ledger: SqlLedger, size: int = 4096) -> None:
        self.ledger = ledger
        self.size = size
        self._items: OrderedDict[str, AnyEvent] = OrderedDict()

    async def get(self, event_id: str) -> AnyEvent | None:
        if event_id not in self._items:
            bodies = await self.ledger.event_bodies([event_id])
            if event_id not in bodies:
                return None
            self._items[event_id] = validate_event(bodies[event_id])
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(event_id)
        return self._items[event_id]


class Dispatcher:
    def __init__(self, settings: Settings, ledger: SqlLedger, policy: Policy, renderer: Renderer,
                 adapters: Mapping[str, ChannelAdapter], now: Callable[[], datetime],
                 on_decided: Callable[[], None]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.policy = policy
        self.renderer = renderer
        self.adapters = adapters
        self.now = now
        self.on_decided = on_decided
        self.owner = f"w-{uuid.uuid4().hex[:12]}"
        self.events = EventCache(ledger)
        self.wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.max_inflight = settings.dispatch_batch * 2

    # ---- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            free = self.max_inflight - len(self._inflight)
            claimed = []
            if free > 0:
                try:
                    claimed = await self.ledger.claim(self.owner, self.now(), min(
                        free, self.settings.dispatch_batch), self.settings.lease_s)
                except Exception as exc:  # noqa: BLE001 - ledger down: nothing is sent, retry
                    log.error("claim_failed", error=str(exc).splitlines()[0],
                              setting="DUNNING_DATABASE_URL")
                    await asyncio.sleep(1.0)
                    continue
            for notice in claimed:
                task = asyncio.create_task(self._handle(notice))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            if len(claimed) < min(free, self.settings.dispatch_batch) or free <= 0:
                await self._idle()

    async def _idle(self) -> None:
        self.wake.clear()
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        if self._inflight:
            waiters.append(asyncio.ensure_future(asyncio.wait(
                set(self._inflight), return_when=asyncio.FIRST_COMPLETED)))
        _, pending = await asyncio.wait(waiters, timeout=self.settings.dispatch_poll_s,
                                           return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def drain(self, timeout_s: float) -> int:
        """Stop claiming, let in-flight sends finish, give back what was not started."""
        self._stopping = True
        self.wake.set()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout_s)
        return await self.ledger.release(self.owner, self.now())

    # ---- one notice ------------------------------------------------------------------------

    async def _handle(self, notice: dict[str, Any]) -> None:
        try:
            prepared = await self._prepare(notice)
            if prepared is not None:
                await self._deliver(prepared)
        except NotSendable as exc:
            await self._terminal(notice, "failed", reason=exc.reason, rule="render")
        except Exception:
            log.exception("notice_crashed", notice_id=notice["notice_id"],
                          event_id=notice["event_id"], channel=notice["channel"])
        finally:
            self.on_decided()

    async def _context(self, notice: dict[str, Any]) -> tuple[AnyEvent, Escalated] | None:
        event = await self.events.get(notice["event_id"])
        if isinstance(event, Escalated):
            return event, event
        if isinstance(event, PaymentReceived):
            async with self.ledger.engine.connect() as conn:
                body = await self.ledger.latest_escalation(conn, notice["account_id"])
            escalation = validate_event(body) if body else None
            if isinstance(escalation, Escalated):
                return event, escalation
        return None

    async def _prepare(self, notice: dict[str, Any]) -> Prepared | None:
        found = await self._context(notice)
        if found is None:
            await self._terminal(notice, "failed", reason="event_missing", rule="ledger")
            return None
        event, escalation = found
        debtor = escalation.debtor.model_dump()
        destination = destination_for(notice["channel"], debtor)
        holds = await self.ledger.active_holds([notice["account_id"]])
        opted = destination.value is not None and bool(await self.ledger.opted_out(
            [(notice["channel"], destination.value)]))
        decision = evaluate(hold_reason=holds.get(notice["account_id"]),
                            destination=destination, opted_out=opted)
        if not decision.sends:
            await self._terminal(notice, "suppressed", reason=decision.reason, rule=decision.rule)
            return None
        assert destination.value is not None
        return Prepared(notice, self._render(notice, event, escalation, destination.value))

    def _render(self, notice: dict[str, Any], event: AnyEvent, escalation: Escalated,
                destination: str) -> RenderedNotice:
        ladder = self.policy.ladder_for(escalation.stage, escalation.ruling_jurisdiction)
        zone = escalation.debtor.timezone or ladder.fallback_timezone
        try:
            today = self.now().astimezone(ZoneInfo(zone)).date()
        except (KeyError, ValueError):
            today = self.now().date()
        data = RenderInput(
            notice_id=notice["notice_id"], channel=notice["channel"], template=notice["template"],
            locale=notice["locale"], stage=notice["stage"],
            account=escalation.account.model_dump(), debtor=escalation.debtor.model_dump(),
            event=event.model_dump(), context=dict(escalation.context), sender=ladder.sender,
            today=today)
        try:
            rendered = self.renderer.render(data)
        except Exception as exc:  # noqa: BLE001 - any template error makes the notice unsendable
            log.error("render_failed", notice_id=notice["notice_id"], error=str(exc))
            raise NotSendable(f"template_error:{type(exc).__name__}") from None
        notice["locale"] = rendered.locale
        if notice["channel"] == "sms":
            step = self.policy.stages.get(notice["stage"])
            budget = self.policy.sms_segment_budget
            if step and notice["step_index"] < len(step.steps):
                budget = self.policy.budget_for(step.steps[notice["step_index"]])
            if sms_segments(rendered.parts["text"]).segments > budget:
                raise NotSendable("sms_over_segment_budget")
        address = escalation.debtor.address
        return RenderedNotice(
            notice_id=notice["notice_id"], event_id=notice["event_id"],
            channel=notice["channel"], template=notice["template"], locale=rendered.locale,
            destination=destination, parts=rendered.parts, recipient_name=escalation.debtor.name,
            address=Address(tuple(address.lines), address.city, address.region,
                            address.postal_code, address.country) if address else None,
            sender=ladder.sender, attempt=int(notice["attempts"]), claimed_at=notice["claimed_at"])

    async def _deliver(self, prepared: Prepared) -> None:
        notice = prepared.notice
        adapter = self.adapters[notice["channel"]]
        try:
            receipt = await adapter.send(prepared.rendered)
        except DeliveryError as exc:
            await self._record_error(notice, exc)
            return
        await self._terminal(notice, "sent", provider=receipt.provider,
                             provider_id=receipt.provider_id)
        log.info("notice_sent", notice_id=notice["notice_id"], event_id=notice["event_id"],
                 channel=notice["channel"], provider=receipt.provider)

    async def _record_error(self, notice: dict[str, Any], exc: DeliveryError) -> None:
        fields = {"notice_id": notice["notice_id"], "event_id": notice["event_id"],
                  "channel": notice["channel"], "reason": exc.reason}
        if isinstance(exc, PermanentDeliveryError):
            log.warning("notice_failed", **fields)
            await self._terminal(notice, "failed", reason=exc.reason, rule="provider")
            return
        attempts = int(notice["attempts"])
        if attempts >= self.settings.max_attempts:
            log.warning("notice_failed_after_retries", attempts=attempts, **fields)
            await self._terminal(notice, "failed", reason=f"attempts_exhausted:{exc.reason}",
                                 rule="provider")
            return
        delay_s = self.backoff_s(attempts)
        if isinstance(exc, TransientDeliveryError) and exc.retry_after_s:
            delay_s = max(delay_s, exc.retry_after_s)
        log.info("notice_retry", attempts=attempts, delay_s=round(delay_s, 2), **fields)
        await self.ledger.retry_later(notice, self.now() + timedelta(seconds=delay_s), self.now(),
                                      reason=exc.reason, owner=self.owner, rule="provider")

    def backoff_s(self, attempts: int) -> float:
        """Exponential backoff with full jitter between half and one and a half of the step."""
        step = min(self.settings.retry_base_s * 2 ** max(attempts - 1, 0),
                   self.settings.retry_max_s)
        return float(step * random.uniform(0.5, 1.5))

    async def _terminal(self, notice: dict[str, Any], status: Any, **extra: Any) -> None:
        done = await self.ledger.finish(notice, status, self.now(), owner=self.owner, **extra)
        if not done:
            log.warning("lease_lost", notice_id=notice["notice_id"], status=status)
