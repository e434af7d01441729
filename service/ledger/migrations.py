"""Forward migrations of the ledger's schema, applied by the service at start.

A new ledger is created at the current version in one go; an older one is brought forward
one version at a time, each step in its own transaction, and ``dunning_meta`` records where
it stands. Several workers starting at once are safe: on PostgreSQL the steps run under an
advisory lock, and every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text, update

from service.ledger.schema import SCHEMA_VERSION, meta, metadata, notices

MIGRATION_LOCK = 0x64756E6E  # "dunn": the advisory lock key of schema changes


def _add_notice_columns(conn: Connection) -> None:
    """v2: what the contact rules count and what provider callbacks report."""
    have = {c["name"] for c in inspect(conn).get_columns("notices")}
    for name in ("destination", "contact_at", "delivery_status", "conversation"):
        if name in have:
            continue
        column = notices.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = " NOT NULL DEFAULT FALSE" if name == "conversation" else ""
        conn.execute(text(f"ALTER TABLE notices ADD COLUMN {name} {kind}{default}"))


def _add_notice_indexes(conn: Connection) -> None:
    """v3: every index of ``notices`` a ledger lacks (those of v2's columns, and the
    destination index the contact rules' history needs); a migration always runs on to the
    latest version, so v2's step leaves them to this one."""
    for index in notices.indexes:
        index.create(conn, checkfirst=True)


# version -> the step that brings a ledger from the version before to it
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    2: _add_notice_columns,
    3: _add_notice_indexes,
}


def current_version(conn: Connection) -> int | None:
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else None


def migrate(conn: Connection) -> tuple[int | None, int]:
    """Create or bring the schema forward; (version found, version now)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    has_meta = inspect(conn).has_table("dunning_meta")
    found = current_version(conn) if has_meta else None
    if found is None:
        metadata.create_all(conn)
        conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        return None, SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"the ledger's schema is version {found}; this worker knows "
                           f"{SCHEMA_VERSION}: upgrade the worker")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(update(meta).where(meta.c.key == "schema_version")
                           .values(value=str(version)))
    metadata.create_all(conn)  # tables added since, with their indexes
    return found, SCHEMA_VERSION
