"""Recording a batch of events in one transaction: notices planned, holds, opt-outs, payments.

Re-delivered and re-published events are no-ops: the event id is a primary key, and a
notice id is derived from (event id, step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select, update

from service.events import AnyEvent, Escalated, Hold, HoldReleased, OptedOut, PaymentReceived
from service.ledger import direct
from service.ledger.schema import WAITING, UtcDateTime, accounts, events, holds, notices, opt_outs
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
    duplicates: int = 0
    notices: int = 0
    cancelled: int = 0
    recorded: list[AnyEvent] = field(default_factory=list)  # the new events, in order

    @property
    def new_events(self) -> int:
        return len(self.recorded)


def normalise_destination(channel: str, destination: str) -> str:
    destination = destination.strip()
    return destination.lower() if channel == "email" else destination.replace(" ", "")


def _ids(event: AnyEvent) -> tuple[str | None, str | None]:
    if isinstance(event, Escalated):
        return event.account.account_id, event.debtor.debtor_id
    if isinstance(event, OptedOut):
        return None, event.debtor.debtor_id
    return event.account.account_id, None


_ACCOUNTS = select(accounts.c.account_id, accounts.c.escalated_at).where(
    accounts.c.account_id.in_(bindparam("ids", expanding=True)))  # built once
_ACCOUNT_MOVED = update(accounts).where(accounts.c.account_id == bindparam("_account")).values(
    event_id=bindparam("_event"), escalated_at=bindparam("_at", type_=UtcDateTime))


class Ingest:
    """Applies accepted events to the ledger, in arrival order, in one transaction."""

    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    async def apply(self, batch: list[Accepted], now: datetime) -> IngestReport:
        return await self.ledger.write(lambda conn: self._apply(conn, batch, now))

    def _apply(self, conn: Connection, batch: list[Accepted], now: datetime) -> IngestReport:
        report = IngestReport()
        new = self._record_events(conn, batch, now)
        report.duplicates = len(batch) - len(new)
        report.recorded = [item.event for item in new]
        # consecutive escalations are written together; any other event in its turn
        run: list[Accepted] = []
        for item in new:
            if isinstance(item.event, Escalated):
                run.append(item)
                continue
            report.notices += self._escalations(conn, run, now)
            run = []
            self._apply_one(conn, item, now, report)
        report.notices += self._escalations(conn, run, now)
        return report

    def _record_events(self, conn: Connection, batch: list[Accepted],
                       now: datetime) -> list[Accepted]:
        """Insert the batch's events in one statement; the items that were new, in order."""
        rows = []
        for item in batch:
            account_id, debtor_id = _ids(item.event)
            rows.append({"event_id": item.event.event_id, "type": item.event.type,
                         "account_id": account_id, "debtor_id": debtor_id,
                         "occurred_at": item.event.occurred_at, "received_at": now,
                         "body": item.body})
        if not rows:
            return []
        inserted = set(direct.insert_new(conn, events, "event_id", rows))
        new = []
        for item in batch:  # an event twice in one batch: the first one is the new one
            if item.event.event_id in inserted:
                inserted.discard(item.event.event_id)
                new.append(item)
        return new

    def _escalations(self, conn: Connection, run: list[Accepted], now: datetime) -> int:
        """A run of escalations: their accounts, then all their notices in one statement."""
        if not run:
            return 0
        self._remember_accounts(conn, [item.event for item in run
                                       if isinstance(item.event, Escalated)])
        rows = []
        for item in run:
            assert isinstance(item.event, Escalated)
            debtor = item.event.debtor
            rows.extend(self.notice_rows(item, item.event.account.account_id,
                                         debtor.debtor_id, debtor.locale, now))
        return self._insert_notices(conn, rows)

    def _insert_notices(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Insert the notice rows of events new in this transaction (batched by the driver);
        how many were new (all of them, unless an id of theirs was somehow taken)."""
        if not rows:
            return 0
        return direct.insert_counted(conn, notices, "notice_id", rows)

    def _remember_accounts(self, conn: Connection, escalations: list[Escalated]) -> None:
        """Each account's latest escalation, as one by one in arrival order would leave it."""
        ids = list({e.account.account_id for e in escalations})
        known = {r.account_id: r.escalated_at for r in direct.run(conn, _ACCOUNTS, {"ids": ids})}
        latest: dict[str, Escalated] = {}
        for event in escalations:
            account_id = event.account.account_id
            seen = latest[account_id].occurred_at if account_id in latest else known.get(
                account_id)
            if seen is None or seen <= event.occurred_at:
                latest[account_id] = event
        fresh = [{"account_id": a, "event_id": e.event_id, "escalated_at": e.occurred_at}
                 for a, e in latest.items() if a not in known]
        direct.run_many(conn, self.ledger.insert_ignore(accounts), fresh)
        direct.run_many(conn, _ACCOUNT_MOVED, [
            {"_account": a, "_event": e.event_id, "_at": e.occurred_at}
            for a, e in latest.items() if a in known])

    def _apply_one(self, conn: Connection, item: Accepted, now: datetime,
                   report: IngestReport) -> None:
        event = item.event
        if isinstance(event, Escalated):  # escalations go in runs: see apply()
            raise AssertionError("escalations are applied by _escalations")
        if isinstance(event, PaymentReceived):
            report.cancelled += self._cancel_waiting(
                conn, event.account.account_id, "payment_received", now,
                before=event.occurred_at, collection_only=True)
            self._payment_notices(conn, item, event, now, report)
        elif isinstance(event, Hold):
            self._hold(conn, event)
            report.cancelled += self._cancel_waiting(
                conn, event.account.account_id, f"hold:{event.reason}", now)
        elif isinstance(event, HoldReleased):
            conn.execute(update(holds).where(and_(
                holds.c.account_id == event.account.account_id, holds.c.reason == event.reason,
                holds.c.since <= event.occurred_at)).values(released_at=event.occurred_at))
        elif isinstance(event, OptedOut):
            conn.execute(self.ledger.insert_ignore(opt_outs).values(
                channel=event.channel,
                destination=normalise_destination(event.channel, event.destination),
                debtor_id=event.debtor.debtor_id, event_id=event.event_id, at=event.occurred_at))

    def _add_notices(self, conn: Connection, item: Accepted, account_id: str,
                     debtor_id: str, locale: str, now: datetime) -> int:
        return self._insert_notices(
            conn, self.notice_rows(item, account_id, debtor_id, locale, now))

    @staticmethod
    def notice_rows(item: Accepted, account_id: str, debtor_id: str, locale: str,
                    now: datetime) -> list[dict[str, Any]]:
        """The ledger rows of an event's notices, as the intake writes them (waiting)."""
        return [{"notice_id": step.notice_id, "event_id": item.event.event_id,
                 "step_index": step.step_index, "stage": step.stage, "channel": step.channel,
                 "template": step.template, "locale": locale, "account_id": account_id,
                 "debtor_id": debtor_id, "escalation_at": item.event.occurred_at,
                 "state": WAITING, "due_at": now, "attempts": 0, "created_at": now,
                 "updated_at": now, "conversation": False} for step in item.steps]

    def _payment_notices(self, conn: Connection, item: Accepted,
                         event: PaymentReceived, now: datetime,
                         report: IngestReport) -> None:
        if not item.steps:
            return
        snapshot = self.ledger.latest_escalation(conn, event.account.account_id)
        if snapshot is None:
            return  # no escalation known for the account: nobody to thank, nothing to send
        debtor = snapshot["debtor"]
        report.notices += self._add_notices(
            conn, item, event.account.account_id, debtor["debtor_id"],
            debtor.get("locale") or "en-US", now)

    def _hold(self, conn: Connection, event: Hold) -> None:
        key = and_(holds.c.account_id == event.account.account_id,
                   holds.c.reason == event.reason)
        found = (conn.execute(select(holds.c.since).where(key))).first()
        if found is None:
            conn.execute(holds.insert().values(
                account_id=event.account.account_id, reason=event.reason,
                event_id=event.event_id, since=event.occurred_at, released_at=None))
        else:
            conn.execute(update(holds).where(key).values(
                event_id=event.event_id, since=event.occurred_at, released_at=None))

    def _cancel_waiting(self, conn: Connection, account_id: str, reason: str,
                        now: datetime, *, before: datetime | None = None,
                        collection_only: bool = False) -> int:
        where: list[Any] = [notices.c.account_id == account_id, notices.c.state == WAITING]
        if before is not None:
            where.append(notices.c.escalation_at < before)
        if collection_only:
            where.append(notices.c.stage != ON_PAYMENT)
        rows = [row_dict(r) for r in conn.execute(select(notices).where(and_(*where)))]
        for notice in rows:
            conn.execute(update(notices).where(and_(
                notices.c.notice_id == notice["notice_id"], notices.c.state == WAITING))
                .values(state="cancelled", reason=reason, updated_at=now))
            outcome = outcome_for(notice, "cancelled", now, reason=reason)
            self.ledger.add_decision(conn, notice, "cancelled", now, reason=reason,
                                           rule="hold" if reason.startswith("hold:") else
                                           "payment", outcome=outcome)
        return len(rows)
