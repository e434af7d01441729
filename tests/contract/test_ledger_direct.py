"""The hot statements run on the driver's cursor (service.ledger.direct) answer exactly as
SQLAlchemy's own execution does, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, and_, bindparam, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.ledger import SqlLedger, direct
from service.ledger.schema import CLAIMED, notices, opt_outs
from tests.helpers.ledgers import ledger_to_cut_off, make_ledger, notice_row

NOW = datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    async with make_ledger(request.param, tmp_path) as made:
        yield made


def _notice(i: int, **changes: object) -> dict[str, object]:
    return notice_row(f"n{i}", NOW + timedelta(seconds=i), **{
        "event_id": f"e{i}", "account_id": f"A{i % 3}", "debtor_id": f"D{i}",
        "escalation_at": NOW, "conversation": i % 2 == 0, "created_at": NOW, "updated_at": NOW,
        **changes})


_BY_IDS = select(notices).where(notices.c.notice_id.in_(bindparam("ids", expanding=True)))
_WAITING_IN = select(notices.c.notice_id).where(and_(
    notices.c.notice_id.in_(bindparam("ids", expanding=True)),
    notices.c.state.in_(("waiting", CLAIMED)), notices.c.due_at >= bindparam("since"))
).order_by(notices.c.notice_id)


async def test_rows_come_back_as_sqlalchemy_reads_them(ledger: SqlLedger) -> None:
    inserted = await ledger.write(lambda conn: direct.insert_new(
        conn, notices, "notice_id", [_notice(i) for i in range(5)]))
    assert inserted == [f"n{i}" for i in range(5)]

    ids = ["n0", "n3", "n4"]
    ours = await ledger.read(lambda conn: [direct.as_dict(r) for r in direct.run(
        conn, _BY_IDS, {"ids": ids})])
    theirs = await ledger.read(lambda conn: [dict(r._mapping) for r in conn.execute(
        _BY_IDS, {"ids": ids})])
    assert sorted(ours, key=lambda r: r["notice_id"]) == sorted(
        theirs, key=lambda r: r["notice_id"])
    assert ours[0]["due_at"].tzinfo is not None and isinstance(ours[0]["conversation"], bool)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 8, 9])
async def test_an_in_list_of_any_length_finds_exactly_its_rows(ledger: SqlLedger,
                                                               size: int) -> None:
    await ledger.execute(notices.insert(), [_notice(i) for i in range(12)])
    ids = [f"n{i}" for i in range(size)] + ["missing"] * (size > 4)
    found = await ledger.read(lambda conn: [r.notice_id for r in direct.run(
        conn, _WAITING_IN, {"ids": ids, "since": NOW + timedelta(seconds=1)})])
    assert found == [f"n{i}" for i in range(1, size)]


async def test_many_rows_and_a_count(ledger: SqlLedger) -> None:
    await ledger.execute(notices.insert(), [_notice(i) for i in range(4)])
    moved = update(notices).where(notices.c.notice_id == bindparam("_id")).values(
        state=bindparam("_state"), reason=bindparam("_reason"))

    def work(conn: Connection) -> int:
        direct.run_many(conn, moved, [{"_id": "n1", "_state": CLAIMED, "_reason": "a"},
                                      {"_id": "n2", "_state": CLAIMED, "_reason": "b"}])
        return direct.count(conn, update(notices).where(
            notices.c.state == CLAIMED).values(reason="c"))

    assert await ledger.write(work) == 2
    rows = await ledger.read(lambda conn: conn.execute(
        select(notices.c.notice_id, notices.c.reason).where(notices.c.state == CLAIMED)
        .order_by(notices.c.notice_id)).all())
    assert [tuple(r) for r in rows] == [("n1", "c"), ("n2", "c")]


async def test_many_rows_with_the_statements_own_values_and_with_one_value_each(
        ledger: SqlLedger) -> None:
    await ledger.execute(notices.insert(), [_notice(i) for i in range(4)])
    # a literal in the WHERE clause is the statement's own value, not the rows'
    released = update(notices).where(and_(notices.c.notice_id == bindparam("_id"),
                                          notices.c.state == "waiting")).values(
        state=CLAIMED, lease_until=bindparam("_until"))
    staged = update(notices).where(notices.c.notice_id == bindparam("_id")).values(
        reason=notices.c.stage)  # one bound value, none of the statement's own

    def work(conn: Connection) -> None:
        direct.run_many(conn, released, [{"_id": "n0", "_until": NOW},
                                         {"_id": "n2", "_until": NOW + timedelta(hours=1)}])
        direct.run_many(conn, staged, [{"_id": "n2"}, {"_id": "n3"}])

    await ledger.write(work)
    rows = await ledger.read(lambda conn: conn.execute(
        select(notices.c.notice_id, notices.c.state, notices.c.lease_until,
               notices.c.reason).order_by(notices.c.notice_id)).all())
    assert [tuple(r) for r in rows] == [
        ("n0", CLAIMED, NOW, None), ("n1", "waiting", None, None),
        ("n2", CLAIMED, NOW + timedelta(hours=1), "m1"), ("n3", "waiting", None, "m1")]


async def test_an_insert_adds_only_the_rows_that_are_new(ledger: SqlLedger) -> None:
    first = await ledger.write(lambda conn: direct.insert_new(
        conn, notices, "notice_id", [_notice(i) for i in range(0, 150, 2)]))
    assert len(first) == 75
    # more rows than one statement takes, some already there, one twice (the first counts)
    batch = [_notice(i) for i in range(150)] + [_notice(1, stage="m2")]
    second = await ledger.write(lambda conn: direct.insert_new(conn, notices, "notice_id", batch))
    assert sorted(second) == sorted(f"n{i}" for i in range(1, 150, 2))
    stages = await ledger.read(lambda conn: conn.execute(
        select(notices.c.stage).where(notices.c.notice_id == "n1")).scalars().all())
    assert stages == ["m1"]


async def test_a_counted_insert_skips_the_rows_that_are_there_and_counts_the_rest(
        ledger: SqlLedger) -> None:
    await ledger.write(lambda conn: direct.insert_counted(
        conn, notices, "notice_id", [_notice(i) for i in range(0, 6, 2)]))
    batch = [_notice(i, stage="m2") for i in range(6)]
    assert await ledger.write(lambda conn: direct.insert_counted(
        conn, notices, "notice_id", batch)) == 3
    assert await ledger.write(lambda conn: direct.insert_counted(
        conn, notices, "notice_id", [])) == 0
    stages = await ledger.read(lambda conn: conn.execute(
        select(notices.c.notice_id, notices.c.stage).order_by(notices.c.notice_id)).all())
    assert [tuple(r) for r in stages] == [(f"n{i}", "m1" if i % 2 == 0 else "m2")
                                          for i in range(6)]


async def test_a_failed_statement_raises_as_sqlalchemy_does_and_undoes_the_transaction(
        ledger: SqlLedger) -> None:
    row = {"channel": "sms", "destination": "+8613800138000", "at": NOW}

    def twice(conn: Connection) -> None:
        direct.run_many(conn, opt_outs.insert(), [row])
        direct.run_many(conn, opt_outs.insert(), [row])

    with pytest.raises(IntegrityError):
        await ledger.write(twice)
    assert await ledger.opted_out([("sms", row["destination"])]) == set()


async def test_a_lost_connection_is_reported_as_invalidated() -> None:
    async with ledger_to_cut_off() as (ledger, cut_off):
        await cut_off()
        with pytest.raises(DBAPIError) as lost:
            await ledger.read(lambda conn: direct.run(conn, _BY_IDS, {"ids": ["n1"]}))
        assert lost.value.connection_invalidated
        assert await ledger.read(lambda conn: direct.run(conn, _BY_IDS, {"ids": ["n1"]})) == []
