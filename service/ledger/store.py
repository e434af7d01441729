"""The SQL ledger: SQLite for one worker, PostgreSQL for several (SQLAlchemy async Core)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

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
from service.outcomes import Outcome, Status, outcome_for


class LedgerUnavailable(Exception):
    """The ledger cannot be reached; the message names DUNNING_DATABASE_URL."""


def async_url(url: str) -> str:
    """SQLAlchemy URL with the async driver this service uses."""
    for plain, driver in (("sqlite://", "sqlite+aiosqlite://"),
                          ("postgresql://", "postgresql+asyncpg://"),
                          ("postgres://", "postgresql+asyncpg://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


def make_engine(url: str, schema: str | None = None) -> AsyncEngine:
    url = async_url(url)
    if url.startswith("sqlite"):
        # one connection: SQLite has one writer, and serialising here avoids "database is locked"
        engine = create_async_engine(url, pool_size=1, max_overflow=0,
                                     connect_args={"timeout": 30})
        return engine
    args = {"server_settings": {"search_path": schema}} if schema else {}
    return create_async_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True,
                               connect_args=args)


def row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


class SqlLedger:
    """Every state change of a notice is one short transaction, with its decision row."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def from_url(cls, url: str, schema: str | None = None) -> SqlLedger:
        return cls(make_engine(url, schema))

    async def create(self) -> None:
        """Create or check the schema (idempotent)."""
        if self.dialect == "sqlite":
            async with self.engine.connect() as conn:
                await conn.execute(text("PRAGMA journal_mode=WAL"))
        async with self.engine.begin() as conn:
            try:
                await migrate(conn)
            except RuntimeError as exc:
                raise LedgerUnavailable(str(exc)) from None

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        await self.engine.dispose()

    def insert_ignore(self, table: Any) -> Insert:
        """INSERT … ON CONFLICT DO NOTHING for the ledger's dialect."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # ---- recording decisions -------------------------------------------------------------

    @staticmethod
    async def add_decision(conn: AsyncConnection, notice: dict[str, Any], status: str,
                           at: datetime, *, reason: str | None = None, rule: str | None = None,
                           outcome: Outcome | None = None) -> None:
        await conn.execute(decisions.insert().values(
            notice_id=notice["notice_id"], status=status, reason=reason, rule=rule,
            attempt=int(notice.get("attempts") or 0), at=at,
            outcome=outcome.to_json() if outcome else None, published=outcome is None,
        ))

    async def finish(self, notice: dict[str, Any], status: Status, at: datetime, *,
                     reason: str | None = None, rule: str | None = None,
                     provider: str | None = None, provider_id: str | None = None,
                     owner: str | None = None) -> bool:
        """Move a claimed notice to a terminal state. False if its lease was lost meanwhile."""
        async with self.engine.begin() as conn:
            return await self._finish(conn, notice, status, at, reason=reason, rule=rule,
                                      provider=provider, provider_id=provider_id, owner=owner)

    async def _finish(self, conn: AsyncConnection, notice: dict[str, Any], status: Status,
                      at: datetime, *, reason: str | None, rule: str | None,
                      provider: str | None, provider_id: str | None,
                      owner: str | None) -> bool:
        where = [notices.c.notice_id == notice["notice_id"]]
        where.append(notices.c.lease_owner == owner if owner else notices.c.state == WAITING)
        if owner:
            where.append(notices.c.state == CLAIMED)
        # a sent notice counts as a contact from when it was let go; anything else does not
        contact_at = func.coalesce(notices.c.contact_at, at) if status == "sent" else None
        result = await conn.execute(update(notices).where(and_(*where)).values(
            state=status, reason=reason, provider=provider, provider_id=provider_id,
            locale=notice["locale"], lease_owner=None, lease_until=None, updated_at=at,
            contact_at=contact_at))
        if result.rowcount == 0:
            return False
        outcome = outcome_for(notice, status, at, reason=reason, provider=provider,
                              provider_id=provider_id)
        await self.add_decision(conn, notice, status, at, reason=reason, rule=rule,
                                outcome=outcome)
        return True

    async def finish_many(self, items: Iterable[tuple[dict[str, Any], Status, dict[str, Any]]],
                          at: datetime, owner: str) -> int:
        """Several terminal decisions in one transaction (the dispatcher's batch)."""
        done = 0
        async with self.engine.begin() as conn:
            for notice, status, extra in items:
                done += await self._finish(conn, notice, status, at, owner=owner,
                                           reason=extra.get("reason"), rule=extra.get("rule"),
                                           provider=extra.get("provider"),
                                           provider_id=extra.get("provider_id"))
        return done

    async def retry_later(self, notice: dict[str, Any], due_at: datetime, at: datetime, *,
                          reason: str, owner: str, publish: bool = False,
                          rule: str | None = None, count_attempt: bool = True) -> bool:
        """Give a claimed notice back to the waiting list, due later (retry, deferral).

        ``count_attempt=False`` when nothing was tried (no rate-limit slot near).
        """
        attempts = notices.c.attempts if count_attempt else notices.c.attempts - 1
        async with self.engine.begin() as conn:
            result = await conn.execute(update(notices).where(and_(
                notices.c.notice_id == notice["notice_id"], notices.c.lease_owner == owner,
                notices.c.state == CLAIMED)).values(
                state=WAITING, due_at=due_at, reason=reason, lease_owner=None,
                lease_until=None, updated_at=at, contact_at=None, attempts=attempts))
            if result.rowcount == 0:
                return False
            outcome = (outcome_for(notice, "deferred", at, reason=reason, not_before=due_at)
                       if publish else None)
            await self.add_decision(conn, notice, "deferred" if publish else "retry", at,
                                    reason=reason, rule=rule, outcome=outcome)
            return True

    # ---- claiming --------------------------------------------------------------------------

    async def claim(self, owner: str, now: datetime, limit: int, lease_s: float,
                    channels: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due notices (and ones whose lease expired) to ``owner``."""
        waiting = and_(notices.c.state == WAITING, notices.c.due_at <= now)
        # a lease that lapsed in another worker (dead, or stalled); never our own: a notice
        # of ours past its lease is still being handled here, and must not run twice
        expired = and_(notices.c.state == CLAIMED, notices.c.lease_until < now,
                       notices.c.lease_owner != owner)
        if channels is not None:
            waiting = and_(waiting, notices.c.channel.in_(list(channels)))
            expired = and_(expired, notices.c.channel.in_(list(channels)))
        async with self.engine.begin() as conn:
            # two index walks that stop at ``limit`` (one OR would sort every due notice)
            found = [*await self._due(conn, expired, notices.c.lease_until, limit),
                     *await self._due(conn, waiting, notices.c.due_at, limit)][:limit]
            if not found:
                return []
            # a lease that expired while claimed: its send may have happened (reconcile first)
            lapsed = {row.notice_id for row in found if row.state == CLAIMED}
            rows = await conn.execute(update(notices).where(and_(
                notices.c.notice_id.in_([row.notice_id for row in found]),
                or_(waiting, expired))).values(
                state=CLAIMED, lease_owner=owner, lease_until=now + timedelta(seconds=lease_s),
                claimed_at=now, attempts=notices.c.attempts + 1, updated_at=now)
                .returning(*notices.c))
            claimed = [row_dict(r) for r in rows]
        for notice in claimed:
            notice["lease_expired"] = notice["notice_id"] in lapsed
        claimed.sort(key=lambda n: (not n["lease_expired"], n["due_at"]))
        return claimed

    async def _due(self, conn: AsyncConnection, where: Any, order: Any,
                   limit: int) -> list[Any]:
        query = select(notices.c.notice_id, notices.c.state).where(where).order_by(
            order).limit(limit)
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await conn.execute(query)).all())

    async def release(self, owner: str, now: datetime) -> int:
        """Give back what ``owner`` holds and has not begun to send (at shutdown).

        A notice already let go to its provider keeps its lease: if its send did not finish,
        the lease expires and the next claim reconciles it before any re-send.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(update(notices).where(and_(
                notices.c.lease_owner == owner, notices.c.state == CLAIMED,
                notices.c.contact_at.is_(None))).values(
                state=WAITING, lease_owner=None, lease_until=None, due_at=now,
                attempts=notices.c.attempts - 1, updated_at=now))
            return int(result.rowcount)

    async def renew_lease(self, notice_id: str, owner: str, now: datetime,
                          lease_s: float) -> bool:
        """Extend ``owner``'s lease on a claimed notice; False if it is no longer theirs.

        A lease that lapsed is still renewed while no other worker has claimed the notice:
        a claim takes only a lapsed lease, and whichever of the two writes comes first wins.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(update(notices).where(and_(
                notices.c.notice_id == notice_id, notices.c.lease_owner == owner,
                notices.c.state == CLAIMED)).values(
                lease_until=now + timedelta(seconds=lease_s)))
            return bool(result.rowcount)

    async def note(self, notice: dict[str, Any], status: str, at: datetime, *, reason: str,
                   rule: str) -> None:
        """A decision that changes nothing about the notice (a reconciliation, a hold-back)."""
        async with self.engine.begin() as conn:
            await self.add_decision(conn, notice, status, at, reason=reason, rule=rule)

    async def provider_id_known(self, provider_id: str) -> bool:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(notices.c.notice_id).where(
                notices.c.provider_id == provider_id))).first()
            return row is not None

    # ---- reads -----------------------------------------------------------------------------

    async def event_bodies(self, event_ids: Sequence[str]) -> dict[str, str]:
        """The stored JSON of each event (as the intake wrote it), by id."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(events.c.event_id, events.c.body).where(
                events.c.event_id.in_(list(event_ids))))
            return {r.event_id: r.body for r in rows}

    async def active_holds(self, account_ids: Sequence[str]) -> dict[str, str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(holds.c.account_id, holds.c.reason).where(and_(
                holds.c.account_id.in_(list(account_ids)), holds.c.released_at.is_(None)))
                .order_by(holds.c.since))
            return {r.account_id: r.reason for r in rows}

    async def opted_out(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not pairs:
            return set()
        destinations = list({d for _, d in pairs})
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(opt_outs.c.channel, opt_outs.c.destination).where(
                opt_outs.c.destination.in_(destinations)))
            return {(r.channel, r.destination) for r in rows} & set(pairs)

    async def unpublished(self, limit: int) -> list[tuple[int, str]]:
        async with self.engine.connect() as conn:
            return await read_unpublished(conn, limit)

    async def mark_published(self, ids: Sequence[int]) -> None:
        async with self.engine.begin() as conn:
            await write_published(conn, ids)

    async def notice(self, notice_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(notices).where(
                notices.c.notice_id == notice_id))).first()
            return row_dict(row) if row else None

    async def timeline(self, notice_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(decisions).where(
                decisions.c.notice_id == notice_id).order_by(decisions.c.id))
            return [row_dict(r) for r in rows]

    async def counts_by_state(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(notices.c.state, func.count()).group_by(
                notices.c.state))
            return {state: int(count) for state, count in rows}

    async def notices_of_account(self, account_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(notices).where(
                notices.c.account_id == account_id).order_by(notices.c.created_at))
            return [row_dict(r) for r in rows]

    async def latest_escalation(self, conn: AsyncConnection,
                                account_id: str) -> dict[str, Any] | None:
        row = (await conn.execute(select(events.c.body).join(
            accounts, accounts.c.event_id == events.c.event_id).where(
            accounts.c.account_id == account_id))).first()
        return json.loads(row.body) if row else None
