"""What the ledger holds, for /metrics: waiting notices by how soon they are due."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, func, select

from service.ledger.schema import WAITING, notices
from service.ledger.store import SqlLedger

# bucket name -> due before now + this; the last bucket takes the rest
BUCKETS = (("due", timedelta(0)), ("1m", timedelta(minutes=1)), ("1h", timedelta(hours=1)),
           ("1d", timedelta(days=1)))


async def waiting_by_bucket(ledger: SqlLedger, now: datetime) -> dict[str, int]:
    bucket = case(*((notices.c.due_at <= now + span, name) for name, span in BUCKETS),
                  else_="later")
    query = select(bucket, func.count()).where(notices.c.state == WAITING).group_by(bucket)
    # a count over every waiting notice (~70 ms for 100,000): beside the ledger's transactions
    found = await ledger.read_aside(
        lambda conn: {str(name): int(count) for name, count in conn.execute(query)})
    return {name: found.get(name, 0) for name, _ in (*BUCKETS, ("later", None))}
