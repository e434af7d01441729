"""Recording a batch of events in one transaction: notices planned, holds, opt-outs, payments.

Re-delivered and re-published events are no-ops: the event id is a primary key, and a
notice id is derived from (event id, step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.events import AnyEvent, Escalated, Hold, HoldReleased, OptedOut, PaymentReceived
from service.ledger.schema import WAITING, accounts, events, holds, notices, opt_outs
from service.ledger.store import SqlLedger, row_dict
from service.outcomes import outcome_for
from service.policy import ON_PAYMENT, PlannedStep


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid event and the notices the policy plans for it."""

    event: AnyEvent
    body: str  # the event as JSON, stored for rendering
    steps: list[PlannedStep] = field(default_factory=list)


@dataclass(slots=True)
class IngestReport:
    new_events: int = 0
    duplicates: int = 0
    notices: int = 0
    cancelled: int = 0


def normalise_destination(channel: str, destination: str) -> str:
    destination = destination.strip()
    return destination.lower() if channel == "email" else destination.replace(" ", "")


def _ids(event: AnyEvent) -> tuple[str | None, str | None]:
    if isinstance(event, Escalated):
        return event.account.account_id, event.debtor.debtor_id
    if isinstance(event, OptedOut):
        return None, event.debtor.debtor_id
    return event.account.account_id, None


class Ingest:
    """Applies accepted events to the ledger, in arrival order, in one transaction."""

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    async def apply(self, batch: list[Accepted], now: datetime) -> IngestReport:
        report = IngestReport()
        async with self.ledger.engine.begin() as conn:
            for item in batch:
                if not await self._record_event(conn, item, now):
                    report.duplicates += 1
                    continue
                report.new_events += 1
                await self._apply_one(conn, item, now, report)
        return report

    async def _record_event(self, conn: AsyncConnection, item: Accepted, now: datetime) -> bool:
        account_id, debtor_id = _ids(item.event)
        result = await conn.execute(self.ledger.insert_ignore(events).values(
            event_id=item.event.event_id, type=item.event.type, account_id=account_id,
            debtor_id=debtor_id, occurred_at=item.event.occurred_at, received_at=now,
            body=item.body))
        return bool(result.rowcount)

    async def _apply_one(self, conn: AsyncConnection, item: Accepted, now: datetime,
                         report: IngestReport) -> None:
        event = item.event
        if isinstance(event, Escalated):
            await self._remember_account(conn, event)
            report.notices += await self._add_notices(conn, item, event.account.account_id,
                                                      event.debtor.debtor_id,
                                                      event.debtor.locale, now)
        elif isinstance(event, PaymentReceived):
            report.cancelled += await self._cancel_waiting(
                conn, event.account.account_id, "payment_received", now,
                before=event.occurred_at, collection_only=True)
            await self._payment_notices(conn, item, event, now, report)
        elif isinstance(event, Hold):
            await self._hold(conn, event)
            report.cancelled += await self._cancel_waiting(
                conn, event.account.account_id, f"hold:{event.reason}", now)
        elif isinstance(event, HoldReleased):
            await conn.execute(update(holds).where(and_(
                holds.c.account_id == event.account.account_id, holds.c.reason == event.reason,
                holds.c.since <= event.occurred_at)).values(released_at=event.occurred_at))
        elif isinstance(event, OptedOut):
            await conn.execute(self.ledger.insert_ignore(opt_outs).values(
                channel=event.channel,
                destination=normalise_destination(event.channel, event.destination),
                debtor_id=event.debtor.debtor_id, event_id=event.event_id, at=event.occurred_at))

    async def _remember_account(self, conn: AsyncConnection, event: Escalated) -> None:
        account_id = event.account.account_id
        current = (await conn.execute(select(accounts.c.escalated_at).where(
            accounts.c.account_id == account_id))).scalar()
        values = {"event_id": event.event_id, "escalated_at": event.occurred_at}
        if current is None:
            await conn.execute(self.ledger.insert_ignore(accounts).values(
                account_id=account_id, **values))
        elif current <= event.occurred_at:
            await conn.execute(update(accounts).where(accounts.c.account_id == account_id)
                               .values(**values))

    async def _add_notices(self, conn: AsyncConnection, item: Accepted, account_id: str,
                           debtor_id: str, locale: str, now: datetime) -> int:
        added = 0
        for step in item.steps:
            result = await conn.execute(self.ledger.insert_ignore(notices).values(
                notice_id=step.notice_id, event_id=item.event.event_id,
                step_index=step.step_index, stage=step.stage, channel=step.channel,
                template=step.template, locale=locale, account_id=account_id,
                debtor_id=debtor_id, escalation_at=item.event.occurred_at, state=WAITING,
                due_at=now, attempts=0, created_at=now, updated_at=now))
            added += result.rowcount
        return added

    async def _payment_notices(self, conn: AsyncConnection, item: Accepted,
                               event: PaymentReceived, now: datetime,
                               report: IngestReport) -> None:
        if not item.steps:
            return
        snapshot = await self.ledger.latest_escalation(conn, event.account.account_id)
        if snapshot is None:
            return  # no escalation known for the account: nobody to thank, nothing to send
        debtor = snapshot["debtor"]
        report.notices += await self._add_notices(
            conn, item, event.account.account_id, debtor["debtor_id"],
            debtor.get("locale") or "en-US", now)

    async def _hold(self, conn: AsyncConnection, event: Hold) -> None:
        key = and_(holds.c.account_id == event.account.account_id,
                   holds.c.reason == event.reason)
        found = (await conn.execute(select(holds.c.since).where(key))).first()
        if found is None:
            await conn.execute(holds.insert().values(
                account_id=event.account.account_id, reason=event.reason,
                event_id=event.event_id, since=event.occurred_at, released_at=None))
        else:
            await conn.execute(update(holds).where(key).values(
                event_id=event.event_id, since=event.occurred_at, released_at=None))

    async def _cancel_waiting(self, conn: AsyncConnection, account_id: str, reason: str,
                              now: datetime, *, before: datetime | None = None,
                              collection_only: bool = False) -> int:
        where: list[Any] = [notices.c.account_id == account_id, notices.c.state == WAITING]
        if before is not None:
            where.append(notices.c.escalation_at < before)
        if collection_only:
            where.append(notices.c.stage != ON_PAYMENT)
        rows = [row_dict(r) for r in await conn.execute(select(notices).where(and_(*where)))]
        for notice in rows:
            await conn.execute(update(notices).where(and_(
                notices.c.notice_id == notice["notice_id"], notices.c.state == WAITING))
                .values(state="cancelled", reason=reason, updated_at=now))
            outcome = outcome_for(notice, "cancelled", now, reason=reason)
            await self.ledger.add_decision(conn, notice, "cancelled", now, reason=reason,
                                           rule="hold" if reason.startswith("hold:") else
                                           "payment", outcome=outcome)
        return len(rows)
