"""Ledger tables (SQLAlchemy Core). The ledger is the durable state of every notice.

Notice states::

    waiting ──claim──► claimed ──► sent | suppressed | cancelled | failed   (terminal)
       ▲                  │
       └──── deferred / retry (due_at later) ◄┘
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

SCHEMA_VERSION = 3  # bump with a step in migrations.py
WAITING, CLAIMED = "waiting", "claimed"
TERMINAL = ("sent", "suppressed", "cancelled", "failed")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("the ledger takes timezone-aware datetimes only")
    return value.astimezone(UTC)


@lru_cache(maxsize=1024)
def _to_sqlite(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DATETIME writes ("2026-11-28 03:00:00.000000"), in C.

    Remembered: a batch writes the same few instants over and over (its own time in four
    columns of every row, each event's time in three), and a hit costs a tenth of the
    conversion. Equal aware datetimes are the same instant, so they share one UTC text; a
    naive one is never equal to an aware one, and raises every time.
    """
    if value is None:
        return None
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_sqlite(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware in Python, UTC in the database (SQLite has no zones: naive UTC there).

    On SQLite the text is written and read by ``datetime.isoformat`` and ``fromisoformat``
    rather than SQLAlchemy's generic formatting and regular expression: the same text, at a
    fraction of the cost (a batch of intake rows holds eleven times of day per event).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _to_sqlite
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _from_sqlite
        return super().result_processor(dialect, coltype)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        return None if value is None else _utc(value)  # SQLite: see bind_processor

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta = Table(
    "dunning_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

events = Table(
    "events", metadata,
    Column("event_id", String(128), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("account_id", String(512)),
    Column("debtor_id", String(512)),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("body", Text, nullable=False),
)

# the latest escalation of each account: where payment confirmations find the debtor
accounts = Table(
    "accounts", metadata,
    Column("account_id", String(512), primary_key=True),
    Column("event_id", String(128), nullable=False),
    Column("escalated_at", UtcDateTime, nullable=False),
)

notices = Table(
    "notices", metadata,
    Column("notice_id", String(64), primary_key=True),
    Column("event_id", String(128), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("stage", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("template", String(128), nullable=False),
    Column("locale", String(32), nullable=False),
    Column("account_id", String(512), nullable=False),
    Column("debtor_id", String(512), nullable=False),
    Column("escalation_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(128)),
    Column("due_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64)),
    Column("lease_until", UtcDateTime),
    Column("claimed_at", UtcDateTime),
    Column("provider", String(32)),
    Column("provider_id", String(128), index=True),
    Column("destination", String(320)),
    # when the contact rules let it go: what caps count (sent, or being sent right now)
    Column("contact_at", UtcDateTime),
    Column("delivery_status", String(32)),  # from provider callbacks: delivered, completed, …
    Column("conversation", Boolean, nullable=False, default=False),  # a call answered
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_notices_state_due", "state", "due_at"),
    Index("ix_notices_account_state", "account_id", "state"),
    Index("ix_notices_debtor_contact", "debtor_id", "contact_at"),
    Index("ix_notices_account_contact", "account_id", "contact_at"),
    # the contact rules read a batch's history by debtor, account or destination (one OR):
    # with an index for each, that is three index lookups, not a scan of every notice sent
    Index("ix_notices_destination_contact", "destination", "contact_at"),
)

# every decision about a notice, append-only; `outcome` is the message for dunning.outcomes
# (a transactional outbox: written with the decision, published after, marked published)
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notice_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("reason", String(256)),
    Column("rule", String(64)),
    Column("attempt", Integer, nullable=False, default=0),
    Column("at", UtcDateTime, nullable=False),
    Column("outcome", Text),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_decisions_unpublished", "published", "id"),
)

holds = Table(
    "holds", metadata,
    Column("account_id", String(512), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("event_id", String(128), nullable=False),
    Column("since", UtcDateTime, nullable=False),
    Column("released_at", UtcDateTime),
)

opt_outs = Table(
    "opt_outs", metadata,
    Column("channel", String(16), primary_key=True),
    Column("destination", String(320), primary_key=True),
    Column("debtor_id", String(512)),
    Column("event_id", String(128)),
    Column("at", UtcDateTime, nullable=False),
)
