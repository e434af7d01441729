"""Forward migrations of the ledger's schema, applied by the service at start.

A new ledger is created at the current version in one go; an older one is brought forward
one version at a time, each step in its own transaction, and ``dunning_meta`` records where
it stands. Several workers starting at once are safe: on PostgreSQL the steps run under an
advisory lock, and every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import Connection, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ledger.schema import SCHEMA_VERSION, meta, metadata, notices

MIGRATION_LOCK = 0x64756E6E  # "dunn": the advisory lock key of schema changes


async def _add_notice_columns(conn: AsyncConnection) -> None:
    """v2: what the contact rules count and what provider callbacks report."""
    def existing(sync_conn: Connection) -> set[str]:
        return {c["name"] for c in inspect(sync_conn).get_columns("notices")}

    have = await conn.run_sync(existing)
    for name in ("destination", "contact_at", "delivery_status", "conversation"):
        if name in have:
            continue
        column = notices.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = " NOT NULL DEFAULT FALSE" if name == "conversation" else ""
        await conn.execute(text(f"ALTER TABLE notices ADD COLUMN {name} {kind}{default}"))
    def create_indexes(sync_conn: Connection) -> None:
        for index in notices.indexes:
            index.create(sync_conn, checkfirst=True)

    await conn.run_sync(create_indexes)


# version -> the step that brings a ledger from the version before to it
MIGRATIONS: dict[int, Callable[[AsyncConnection], Awaitable[None]]] = {
    2: _add_notice_columns,
}


async def current_version(conn: AsyncConnection) -> int | None:
    found = (await conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")))
    value = found.scalar()
    return int(value) if value is not None else None


async def migrate(conn: AsyncConnection) -> tuple[int | None, int]:
    """Create or bring the schema forward; (version found, version now)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    has_meta = await conn.run_sync(lambda c: inspect(c).has_table("dunning_meta"))
    found = await current_version(conn) if has_meta else None
    if found is None:
        await conn.run_sync(metadata.create_all)
        await conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return None, SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"the ledger's schema is version {found}; this worker knows "
                           f"{SCHEMA_VERSION}: upgrade the worker")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        await MIGRATIONS[version](conn)
        await conn.execute(update(meta).where(meta.c.key == "schema_version")
                           .values(value=str(version)))
    await conn.run_sync(metadata.create_all)  # tables added since, with their indexes
    return found, SCHEMA_VERSION
