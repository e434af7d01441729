"""What the ledger holds, for /metrics: waiting notices by how soon they are due."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select

from service.ledger.schema import WAITING, notices
from service.ledger.store import SqlLedger

# bucket name -> due before now + this; the last bucket takes the rest
BUCKETS = (("due", timedelta(0)), ("1m", timedelta(minutes=1)), ("1h", timedelta(hours=1)),
           ("1d", timedelta(days=1)))


def waiting_counts(now: datetime) -> Select[Any]:
    """One statement: a count of each bucket's range of ``due_at``, side by side.

    Each range is counted on the ``(state, due_at)`` index alone, and each waiting notice
    falls in one range: a single pass over the index's waiting entries. (A ``CASE`` for
    each row, grouped, read the same entries at about six times the cost: 600 against
    100 ms for a million waiting notices.)
    """
    edges = [now + span for _, span in BUCKETS]
    ranges: list[ColumnElement[bool]] = []
    for index, edge in enumerate(edges):
        upper = notices.c.due_at <= edge
        ranges.append(upper if index == 0 else and_(notices.c.due_at > edges[index - 1], upper))
    ranges.append(notices.c.due_at > edges[-1])
    return select(*(select(func.count()).select_from(notices).where(
        notices.c.state == WAITING, within).scalar_subquery() for within in ranges))


async def waiting_by_bucket(ledger: SqlLedger, now: datetime) -> dict[str, int]:
    query = waiting_counts(now)
    # beside the ledger's transactions: it still reads every waiting notice's index entry
    counts = await ledger.read_aside(lambda conn: [int(n) for n in conn.execute(query).one()])
    return dict(zip([name for name, _ in BUCKETS] + ["later"], counts, strict=True))
