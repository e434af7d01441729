"""The dispatcher's batch stage: from a batch of claimed notices to the ones that may go now.

The same stages as :meth:`Dispatcher._prepare` for one notice, in the same order (event,
destination, render, hold, opt-out, contact rules), but with the ledger asked once per
batch instead of once per notice: the events in one query (each parsed once, then cached),
then the holds, opt-outs and contact rules of the whole batch in one transaction
(:func:`decide_contacts`). Notices this stage does not handle (a reconciliation first, a
payment's confirmation) are handed back to go one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service import metrics
from service.channels.base import RenderedNotice
from service.compose import Composer, EventCache, NotSendable
from service.events import Escalated
from service.ledger import SqlLedger
from service.ledger.contacts import ContactRequest, decide_contacts
from service.reconcile import needs_reconciling
from service.rules import Destination, check_timing, destination_for

Terminal = Callable[..., Coroutine[Any, Any, None]]  # (notice, status, reason=…, rule=…)


@dataclass(slots=True)
class Prepared:
    ready: list[tuple[dict[str, Any], RenderedNotice]] = field(default_factory=list)
    one_by_one: list[dict[str, Any]] = field(default_factory=list)
    closing: list[Coroutine[Any, Any, None]] = field(default_factory=list)  # terminal writes
    decided: int = 0  # notices suppressed or deferred in the batch's transaction


class BatchPreparer:
    def __init__(self, composer: Composer, events: EventCache, ledger: SqlLedger,
                 terminal: Terminal, owner: str, lease_s: float) -> None:
        self.composer = composer
        self.events = events
        self.ledger = ledger
        self.terminal = terminal
        self.owner = owner
        self.lease_s = lease_s

    async def prepare(self, claimed: list[dict[str, Any]], now: datetime) -> Prepared:
        out = Prepared(one_by_one=[n for n in claimed if needs_reconciling(n)])
        fast = [n for n in claimed if not needs_reconciling(n)]
        events = await self.events.load([n["event_id"] for n in fast])
        candidates: list[tuple[dict[str, Any], Escalated, Destination]] = []
        for notice in fast:
            event = events.get(notice["event_id"])
            if isinstance(event, Escalated):
                debtor = event.debtor.model_dump()
                candidates.append((notice, event, destination_for(notice["channel"], debtor)))
            else:  # a payment's confirmation, or an event gone: the one-by-one path says
                out.one_by_one.append(notice)
        if candidates:
            await self._decide(candidates, now, out)
        return out

    async def _decide(self, candidates: list[tuple[dict[str, Any], Escalated, Destination]],
                      now: datetime, out: Prepared) -> None:
        requests: list[ContactRequest] = []
        rendered: dict[str, RenderedNotice] = {}
        for notice, event, destination in candidates:
            request = self._check(notice, event, destination, now, out, rendered)
            if request is not None:
                requests.append(request)
            await asyncio.sleep(0)  # rendering is CPU: let the loop breathe between notices
        verdicts = await decide_contacts(self.ledger, requests, now, self.owner, self.lease_s)
        for request, verdict in zip(requests, verdicts, strict=True):
            notice = request.notice
            if verdict.sends:
                out.ready.append((notice, rendered[notice["notice_id"]]))
            else:
                out.decided += 1
                status = {"defer": "deferred", "suppress": "suppressed"}.get(verdict.verdict,
                                                                            verdict.verdict)
                metrics.NOTICES.labels(notice["channel"], status, verdict.reason or "").inc()

    def _check(self, notice: dict[str, Any], event: Escalated, destination: Destination,
               now: datetime, out: Prepared,
               rendered: dict[str, RenderedNotice]) -> ContactRequest | None:
        """Render, and what the batch's transaction decides; None if the notice is done."""
        if destination.value is None:  # suppressed there, unless held: a hold says why first
            return ContactRequest(notice, destination, None)
        try:
            rendered[notice["notice_id"]] = self.composer.render(
                notice, event, event, destination.value, now)
        except NotSendable as exc:
            out.closing.append(self.terminal(notice, "failed", reason=exc.reason,
                                             rule=exc.rule))
            return None
        subject = self.composer.subject(notice, event, destination.value)
        rules = self.composer.rules(event, notice["channel"])
        return ContactRequest(notice, destination,
                              lambda history: check_timing(rules, subject, history, now))
