"""Relaying the transactional outbox: unpublished outcomes, published once, then marked.

On PostgreSQL several workers relay at once, so the rows a relay reads stay locked (``FOR
UPDATE SKIP LOCKED``) until it has marked them published: two relays never publish the same
outcome, and a relay that fails lets its rows go with the rollback. SQLite serves one
worker, and its single connection is not held while the broker confirms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select, update

from service.ledger.schema import decisions
from service.ledger.store import SqlLedger

Publish = Callable[[list[tuple[int, str]]], Awaitable[None]]  # (decision id, outcome JSON)


async def relay_pending(ledger: SqlLedger, limit: int, publish: Publish) -> int:
    """Publish up to ``limit`` unpublished outcomes, oldest first; how many were published."""
    if ledger.dialect != "postgresql":
        rows = await ledger.unpublished(limit)
        if rows:
            await publish(rows)
            await ledger.mark_published([row_id for row_id, _ in rows])
        return len(rows)
    async with ledger.engine.begin() as conn:
        found = await conn.execute(select(decisions.c.id, decisions.c.outcome).where(
            decisions.c.published.is_(False)).order_by(decisions.c.id).limit(limit)
            .with_for_update(skip_locked=True))
        rows = [(row.id, row.outcome) for row in found]
        if rows:
            await publish(rows)
            await conn.execute(update(decisions).where(
                decisions.c.id.in_([row_id for row_id, _ in rows])).values(published=True))
    return len(rows)
