"""The SQL ledger: SQLite for one worker, PostgreSQL for several (SQLAlchemy Core).

Its transactions run on the ledger's own threads (:mod:`service.ledger.threads`); the
statements of every round are built once, since building one costs more than running it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)

from service.ledger import direct
from service.ledger.migrations import migrate
from service.ledger.pending import read_unpublished, write_published
from service.ledger.schema import (
    CLAIMED,
    WAITING,
    accounts,
    decisions,
    events,
    holds,
    notices,
    opt_outs,
)
from service.ledger.threads import LedgerThreads
from service.outcomes import Outcome, Status, outcome_for


class LedgerUnavailable(Exception):
    """The ledger cannot be reached; the message names DUNNING_DATABASE_URL."""


def row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


# the statements of every round of the dispatcher, built once (see _claiming)
_EVENT_BODIES = select(events.c.event_id, events.c.body).where(
    events.c.event_id.in_(bindparam("ids", expanding=True)))
_ACTIVE_HOLDS = select(holds.c.account_id, holds.c.reason).where(and_(
    holds.c.account_id.in_(bindparam("ids", expanding=True)), holds.c.released_at.is_(None))
).order_by(holds.c.since)
_OPTED_OUT = select(opt_outs.c.channel, opt_outs.c.destination).where(
    opt_outs.c.destination.in_(bindparam("destinations", expanding=True)))


def holds_in(conn: Connection, account_ids: Sequence[str]) -> dict[str, str]:
    """The active hold of each of these accounts that has one: account id -> reason."""
    return {r.account_id: r.reason for r in direct.run(conn, _ACTIVE_HOLDS,
                                                        {"ids": list(account_ids)})}


def opted_out_in(conn: Connection,
                 pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (channel, destination) pairs opted out."""
    if not pairs:
        return set()
    rows = direct.run(conn, _OPTED_OUT, {"destinations": list({d for _, d in pairs})})
    return {(r.channel, r.destination) for r in rows} & set(pairs)


@dataclass(frozen=True, slots=True)
class _Claiming:
    expired: Select[Any]
    waiting: Select[Any]
    claim: Any


@cache
def _claiming(dialect: str, by_channel: bool) -> _Claiming:
    """The statements of a claim, built once: building one costs more than running it."""
    now: Any = bindparam("now")
    owner: Any = bindparam("owner")
    waiting = and_(notices.c.state == WAITING, notices.c.due_at <= now)
    # a lease that lapsed in another worker (dead, or stalled); never our own: a notice of
    # ours past its lease is still being handled here, and must not run twice
    expired = and_(notices.c.state == CLAIMED, notices.c.lease_until < now,
                   notices.c.lease_owner != owner)
    found = []
    for where, order in ((expired, notices.c.lease_until), (waiting, notices.c.due_at)):
        if by_channel:
            where = and_(where, notices.c.channel.in_(bindparam("channels", expanding=True)))
        query = select(notices.c.notice_id, notices.c.state).where(where).order_by(
            order).limit(bindparam("limit"))
        found.append(query.with_for_update(skip_locked=True) if dialect == "postgresql"
                     else query)
    claim = update(notices).where(and_(
        notices.c.notice_id.in_(bindparam("ids", expanding=True)), or_(waiting, expired))
    ).values(state=CLAIMED, lease_owner=owner, lease_until=bindparam("until"), claimed_at=now,
             attempts=notices.c.attempts + 1, updated_at=now).returning(*notices.c)
    return _Claiming(found[0], found[1], claim)


class SqlLedger(LedgerThreads):
    """Every state change of a notice is one short transaction, with its decision row."""

    async def create(self) -> None:
        """Create or check the schema (idempotent)."""
        try:
            await self.write(migrate)
        except RuntimeError as exc:
            raise LedgerUnavailable(str(exc)) from None

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute(text("SELECT 1")).scalar())

    def insert_ignore(self, table: Table) -> Any:
        """INSERT … ON CONFLICT DO NOTHING for the ledger's dialect (built once)."""
        return direct.insert_ignore(self.dialect, table)

    # ---- recording decisions -------------------------------------------------------------

    @staticmethod
    def add_decision(conn: Connection, notice: dict[str, Any], status: str, at: datetime, *,
                     reason: str | None = None, rule: str | None = None,
                     outcome: Outcome | None = None) -> None:
        conn.execute(decisions.insert().values(
            notice_id=notice["notice_id"], status=status, reason=reason, rule=rule,
            attempt=int(notice.get("attempts") or 0), at=at,
            outcome=outcome.to_json() if outcome else None, published=outcome is None,
        ))

    async def finish(self, notice: dict[str, Any], status: Status, at: datetime, *,
                     reason: str | None = None, rule: str | None = None,
                     provider: str | None = None, provider_id: str | None = None,
                     owner: str | None = None) -> bool:
        """Move a claimed notice to a terminal state. False if its lease was lost meanwhile."""
        return await self.write(lambda conn: self.finish_in(
            conn, notice, status, at, reason=reason, rule=rule, provider=provider,
            provider_id=provider_id, owner=owner))

    def finish_in(self, conn: Connection, notice: dict[str, Any], status: Status,
                  at: datetime, *, reason: str | None, rule: str | None,
                  provider: str | None, provider_id: str | None, owner: str | None) -> bool:
        """:meth:`finish` inside a transaction of the caller's."""
        where = [notices.c.notice_id == notice["notice_id"]]
        where.append(notices.c.lease_owner == owner if owner else notices.c.state == WAITING)
        if owner:
            where.append(notices.c.state == CLAIMED)
        # a sent notice counts as a contact from when it was let go; anything else does not
        contact_at = func.coalesce(notices.c.contact_at, at) if status == "sent" else None
        result = conn.execute(update(notices).where(and_(*where)).values(
            state=status, reason=reason, provider=provider, provider_id=provider_id,
            locale=notice["locale"], lease_owner=None, lease_until=None, updated_at=at,
            contact_at=contact_at))
        if result.rowcount == 0:
            return False
        outcome = outcome_for(notice, status, at, reason=reason, provider=provider,
                              provider_id=provider_id)
        self.add_decision(conn, notice, status, at, reason=reason, rule=rule, outcome=outcome)
        return True

    async def retry_later(self, notice: dict[str, Any], due_at: datetime, at: datetime, *,
                          reason: str, owner: str, publish: bool = False,
                          rule: str | None = None, count_attempt: bool = True) -> bool:
        """Give a claimed notice back to the waiting list, due later (retry, deferral).

        ``count_attempt=False`` when nothing was tried (no rate-limit slot near).
        """
        attempts = notices.c.attempts if count_attempt else notices.c.attempts - 1

        def work(conn: Connection) -> bool:
            result = conn.execute(update(notices).where(and_(
                notices.c.notice_id == notice["notice_id"], notices.c.lease_owner == owner,
                notices.c.state == CLAIMED)).values(
                state=WAITING, due_at=due_at, reason=reason, lease_owner=None,
                lease_until=None, updated_at=at, contact_at=None, attempts=attempts))
            if result.rowcount == 0:
                return False
            outcome = (outcome_for(notice, "deferred", at, reason=reason, not_before=due_at)
                       if publish else None)
            self.add_decision(conn, notice, "deferred" if publish else "retry", at,
                              reason=reason, rule=rule, outcome=outcome)
            return True
        return await self.write(work)

    # ---- claiming --------------------------------------------------------------------------

    async def claim(self, owner: str, now: datetime, limit: int, lease_s: float,
                    channels: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due notices (and ones whose lease expired) to ``owner``."""
        statements = _claiming(self.dialect, channels is not None)
        values = {"now": now, "owner": owner, "limit": limit, "channels": list(channels or ()),
                  "until": now + timedelta(seconds=lease_s)}

        def work(conn: Connection) -> tuple[list[dict[str, Any]], set[str]]:
            # two index walks that stop at ``limit`` (one OR would sort every due notice)
            found = [*direct.run(conn, statements.expired, values),
                     *direct.run(conn, statements.waiting, values)][:limit]
            if not found:
                return [], set()
            rows = direct.run(conn, statements.claim, {
                **values, "ids": [row.notice_id for row in found]})
            # a lease that expired while claimed: its send may have happened (reconcile first)
            return [direct.as_dict(r) for r in rows], {r.notice_id for r in found
                                                 if r.state == CLAIMED}

        claimed, lapsed = await self.write(work)
        for notice in claimed:
            notice["lease_expired"] = notice["notice_id"] in lapsed
        claimed.sort(key=lambda n: (not n["lease_expired"], n["due_at"]))
        return claimed

    async def release(self, owner: str, now: datetime) -> int:
        """Give back what ``owner`` holds and has not begun to send (at shutdown).

        A notice already let go to its provider keeps its lease: if its send did not finish,
        the lease expires and the next claim reconciles it before any re-send.
        """
        return await self.write(lambda conn: int(conn.execute(update(notices).where(and_(
            notices.c.lease_owner == owner, notices.c.state == CLAIMED,
            notices.c.contact_at.is_(None))).values(
            state=WAITING, lease_owner=None, lease_until=None, due_at=now,
            attempts=notices.c.attempts - 1, updated_at=now)).rowcount))

    async def renew_lease(self, notice_id: str, owner: str, now: datetime,
                          lease_s: float) -> bool:
        """Extend ``owner``'s lease on a claimed notice; False if it is no longer theirs.

        A lease that lapsed is still renewed while no other worker has claimed the notice:
        a claim takes only a lapsed lease, and whichever of the two writes comes first wins.
        """
        return await self.write(lambda conn: bool(conn.execute(update(notices).where(and_(
            notices.c.notice_id == notice_id, notices.c.lease_owner == owner,
            notices.c.state == CLAIMED)).values(
            lease_until=now + timedelta(seconds=lease_s))).rowcount))

    async def note(self, notice: dict[str, Any], status: str, at: datetime, *, reason: str,
                   rule: str) -> None:
        """A decision that changes nothing about the notice (a reconciliation, a hold-back)."""
        await self.write(lambda conn: self.add_decision(conn, notice, status, at,
                                                        reason=reason, rule=rule))

    async def provider_id_known(self, provider_id: str) -> bool:
        return await self.read(lambda conn: conn.execute(select(notices.c.notice_id).where(
            notices.c.provider_id == provider_id)).first() is not None)

    # ---- reads -----------------------------------------------------------------------------

    async def event_bodies(self, event_ids: Sequence[str]) -> dict[str, str]:
        """The stored JSON of each event (as the intake wrote it), by id."""
        return await self.read(lambda conn: {r.event_id: r.body for r in direct.run(
            conn, _EVENT_BODIES, {"ids": list(event_ids)})})

    async def active_holds(self, account_ids: Sequence[str]) -> dict[str, str]:
        return await self.read(lambda conn: holds_in(conn, account_ids))

    async def opted_out(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return await self.read(lambda conn: opted_out_in(conn, pairs)) if pairs else set()

    async def unpublished(self, limit: int) -> list[tuple[int, str]]:
        return await self.read(lambda conn: read_unpublished(conn, limit))

    async def mark_published(self, ids: Sequence[int]) -> None:
        await self.write(lambda conn: write_published(conn, ids))

    async def notice(self, notice_id: str) -> dict[str, Any] | None:
        row = await self.read(lambda conn: conn.execute(select(notices).where(
            notices.c.notice_id == notice_id)).first())
        return row_dict(row) if row else None

    async def timeline(self, notice_id: str) -> list[dict[str, Any]]:
        return await self.read(lambda conn: [row_dict(r) for r in conn.execute(
            select(decisions).where(decisions.c.notice_id == notice_id).order_by(
                decisions.c.id))])

    async def counts_by_state(self) -> dict[str, int]:
        return await self.read(lambda conn: {state: int(count) for state, count in conn.execute(
            select(notices.c.state, func.count()).group_by(notices.c.state))})

    async def notices_of_account(self, account_id: str) -> list[dict[str, Any]]:
        return await self.read(lambda conn: [row_dict(r) for r in conn.execute(
            select(notices).where(notices.c.account_id == account_id).order_by(
                notices.c.created_at))])

    @staticmethod
    def latest_escalation(conn: Connection, account_id: str) -> dict[str, Any] | None:
        row = conn.execute(select(events.c.body).join(
            accounts, accounts.c.event_id == events.c.event_id).where(
            accounts.c.account_id == account_id)).first()
        return json.loads(row.body) if row else None
