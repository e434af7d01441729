"""Terminal decisions written in groups: one transaction for every decision that is waiting.

Each caller still gets its own answer (was the notice still its own to finish?), and the
outcome of each decision is written in the same transaction as the decision (the
transactional outbox), exactly as :meth:`SqlLedger.finish` does one at a time. While one
group is being written the next one gathers, so a lone decision waits for nothing and a
busy dispatcher writes hundreds of decisions per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select, update

from service.ledger import direct
from service.ledger.schema import CLAIMED, UtcDateTime, decisions, notices
from service.ledger.store import SqlLedger
from service.outcomes import Status, outcome_for

MAX_GROUP = 500  # decisions per transaction at most


@dataclass(frozen=True, slots=True)
class Finish:
    notice: dict[str, Any]
    status: Status
    at: datetime
    extra: dict[str, Any]


def _values(item: Finish) -> dict[str, Any]:
    return {"_id": item.notice["notice_id"], "_state": item.status,
            "_reason": item.extra.get("reason"), "_provider": item.extra.get("provider"),
            "_provider_id": item.extra.get("provider_id"), "_locale": item.notice["locale"],
            "_at": item.at}


def _terminal_update(sent: bool) -> Any:
    at = bindparam("_at", type_=UtcDateTime)
    # a sent notice counts as a contact from when it was let go; anything else does not
    contact_at = func.coalesce(notices.c.contact_at, at) if sent else None
    return update(notices).where(notices.c.notice_id == bindparam("_id")).values(
        state=bindparam("_state"), reason=bindparam("_reason"),
        provider=bindparam("_provider"), provider_id=bindparam("_provider_id"),
        locale=bindparam("_locale"), lease_owner=None, lease_until=None, updated_at=at,
        contact_at=contact_at)


_STILL_MINE = select(notices.c.notice_id).where(and_(
    notices.c.notice_id.in_(bindparam("ids", expanding=True)),
    notices.c.lease_owner == bindparam("owner"), notices.c.state == CLAIMED))
_STILL_MINE_LOCKED = _STILL_MINE.with_for_update()
_INSERT_DECISIONS = decisions.insert()


def _still_mine(conn: Connection, dialect: str, ids: list[str], owner: str) -> set[str]:
    query = _STILL_MINE_LOCKED if dialect == "postgresql" else _STILL_MINE
    return {row.notice_id for row in direct.run(conn, query, {"ids": ids, "owner": owner})}


def _decision_row(item: Finish) -> dict[str, Any]:
    extra = item.extra
    outcome = outcome_for(item.notice, item.status, item.at, reason=extra.get("reason"),
                          provider=extra.get("provider"), provider_id=extra.get("provider_id"))
    return {"notice_id": item.notice["notice_id"], "status": item.status,
            "reason": extra.get("reason"), "rule": extra.get("rule"),
            "attempt": int(item.notice.get("attempts") or 0), "at": item.at,
            "outcome": outcome.to_json(), "published": False}


TERMINAL_UPDATE = {sent: _terminal_update(sent) for sent in (True, False)}


async def finish_group(ledger: SqlLedger, items: list[Finish], owner: str) -> list[bool]:
    """Move claimed notices to their terminal states in one transaction; False for a notice
    whose lease was lost meanwhile (it is left alone)."""
    def work(conn: Connection) -> set[str]:
        mine = _still_mine(conn, ledger.dialect, [i.notice["notice_id"] for i in items], owner)
        ours = [item for item in items if item.notice["notice_id"] in mine]
        for sent in (True, False):
            rows = [_values(item) for item in ours if (item.status == "sent") is sent]
            direct.run_many(conn, TERMINAL_UPDATE[sent], rows)
        direct.run_many(conn, _INSERT_DECISIONS, [_decision_row(item) for item in ours])
        return mine

    mine = await ledger.write(work)
    return [item.notice["notice_id"] in mine for item in items]


class Recorder:
    """``await recorder.finish(notice, status, at, reason=…)`` -> True, or False if the
    lease was lost; the decisions of all callers waiting at once share one transaction."""

    def __init__(self, ledger: SqlLedger, owner: str) -> None:
        self.ledger = ledger
        self.owner = owner
        self._pending: list[tuple[Finish, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def finish(self, notice: dict[str, Any], status: Status, at: datetime,
                     **extra: Any) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((Finish(notice, status, at, extra), future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ledger-recorder")
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                await self._write(group)

    async def _write(self, group: list[tuple[Finish, asyncio.Future[bool]]]) -> None:
        try:
            done = await finish_group(self.ledger, [item for item, _ in group], self.owner)
        except Exception as exc:  # noqa: BLE001 - each caller gets the error, as with finish()
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), ok in zip(group, done, strict=True):
            if not future.done():
                future.set_result(ok)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
