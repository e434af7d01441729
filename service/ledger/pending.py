"""Relaying the transactional outbox: unpublished outcomes, published once, then marked.

On PostgreSQL several workers relay at once, so the rows a relay reads stay locked (``FOR
UPDATE SKIP LOCKED``) until it has marked them published: two relays never publish the same
outcome, and a relay that fails lets its rows go with the rollback. SQLite serves one
worker, and its single connection is not held while the broker confirms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.schema import decisions

if TYPE_CHECKING:
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
        rows = await read_unpublished(conn, limit, lock=True)
        if rows:
            await publish(rows)
            await write_published(conn, [row_id for row_id, _ in rows])
    return len(rows)


async def read_unpublished(conn: AsyncConnection, limit: int,
                           lock: bool = False) -> list[tuple[int, str]]:
    """The oldest ``limit`` outcomes not yet published, (decision id, outcome JSON); with
    ``lock``, each stays locked until the transaction ends, and rows locked by another
    transaction are skipped (PostgreSQL)."""
    query = select(decisions.c.id, decisions.c.outcome).where(
        decisions.c.published.is_(False)).order_by(decisions.c.id).limit(limit)
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [(row.id, row.outcome) for row in await conn.execute(query)]


async def write_published(conn: AsyncConnection, ids: Sequence[int]) -> None:
    await conn.execute(update(decisions).where(decisions.c.id.in_(list(ids)))
                       .values(published=True))
