"""The ledger's transactions on its own threads: results, errors and lost connections."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from service import metrics
from service.ledger import SqlLedger
from service.ledger.schema import opt_outs
from tests.helpers.ledgers import every_thread_connected, ledger_to_cut_off, make_ledger

NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    async with make_ledger(request.param, tmp_path) as made:
        yield made


async def test_a_result_must_be_read_inside_its_transaction(ledger: SqlLedger) -> None:
    with pytest.raises(TypeError, match="inside the transaction"):
        await ledger.read(lambda conn: conn.execute(select(opt_outs)))
    assert await ledger.read(lambda conn: conn.execute(select(opt_outs)).all()) == []


async def test_a_failed_transaction_writes_nothing_and_the_next_one_works(
        ledger: SqlLedger) -> None:
    row = {"channel": "sms", "destination": "+8613800138000", "at": NOW}

    def twice(conn: Connection) -> None:
        conn.execute(opt_outs.insert().values(**row))
        conn.execute(opt_outs.insert().values(**row))  # the same key: the whole is undone

    with pytest.raises(IntegrityError):
        await ledger.write(twice)
    assert await ledger.opted_out([("sms", row["destination"])]) == set()
    await ledger.execute(opt_outs.insert().values(**row))
    assert await ledger.opted_out([("sms", row["destination"])]) == {("sms",
                                                                      row["destination"])}


async def test_when_the_server_drops_every_connection_one_transaction_fails_then_all_reconnect(
        ) -> None:
    async with ledger_to_cut_off() as (ledger, cut_off):
        assert await cut_off() >= 2
        with pytest.raises(DBAPIError):
            await ledger.ping()
        await every_thread_connected(ledger)
        await ledger.ping()


async def test_a_long_read_aside_holds_up_no_transaction(tmp_path: Path) -> None:
    async with make_ledger("sqlite", tmp_path) as ledger:
        def slow_count(conn: Connection) -> int:
            count = len(conn.execute(select(opt_outs)).all())
            time.sleep(0.5)  # a long count over many notices, still reading
            return count

        reading = asyncio.create_task(ledger.read_aside(slow_count))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await ledger.execute(opt_outs.insert().values(channel="sms", destination="+8613800138000",
                                                      at=NOW))
        assert time.monotonic() - started < 0.3
        assert await reading == 0


def _seconds(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"{name}_sum") or 0.0


async def test_a_transaction_queued_behind_a_slow_one_shows_as_waiting(tmp_path: Path) -> None:
    async with make_ledger("sqlite", tmp_path) as ledger:
        waited = _seconds("dunning_ledger_wait_seconds")
        busy = _seconds("dunning_ledger_transaction_seconds")

        def slow(conn: Connection) -> None:
            time.sleep(0.3)

        slow_write = asyncio.create_task(ledger.write(slow))
        await asyncio.sleep(0.05)
        await ledger.ping()  # waits for the one SQLite thread
        await slow_write
        assert _seconds("dunning_ledger_wait_seconds") - waited >= 0.2
        assert _seconds("dunning_ledger_transaction_seconds") - busy >= 0.3


def _wal_syncs(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[float]:
    """When the SQLite write-ahead log was fsynced (os.fsync watched, or made to fail)."""
    synced: list[float] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            if fail:
                raise OSError(errno.EIO, "the disk went away")
            real_fsync(fd)
            synced.append(time.monotonic())
            return
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


async def test_sqlite_commits_are_on_disk_before_anyone_hears_of_them_and_share_fsyncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_ledger("sqlite", tmp_path) as ledger:
        assert await ledger.read(lambda conn: conn.exec_driver_sql(
            "PRAGMA synchronous").scalar()) == 1  # NORMAL: the ledger's thread syncs the log
        synced = _wal_syncs(monkeypatch)
        committed: dict[int, float] = {}

        def insert(i: int) -> Callable[[Connection], None]:
            def work(conn: Connection) -> None:
                conn.execute(opt_outs.insert().values(channel="sms", destination=f"+86{i}",
                                                      at=NOW))
                committed[i] = time.monotonic()  # the commit follows at once
            return work

        async def one(i: int) -> tuple[int, float]:
            await ledger.write(insert(i))
            return i, time.monotonic()

        answered = await asyncio.gather(*(one(i) for i in range(60)))
    for i, at in answered:
        assert any(committed[i] <= sync <= at for sync in synced), i
    assert 1 <= len(synced) < 30  # sixty commits, a few fsyncs


async def test_a_log_that_cannot_be_synced_fails_the_writes_waiting_on_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_ledger("sqlite", tmp_path) as ledger:
        _wal_syncs(monkeypatch, fail=True)
        with pytest.raises(OSError, match="the disk went away"):
            await ledger.execute(opt_outs.insert().values(channel="sms",
                                                          destination="+8613800138000", at=NOW))
        assert await ledger.opted_out([("sms", "+8613800138000")])  # a read needs no sync
