"""Ledgers for tests: a SQLite file, or a fresh schema in the local PostgreSQL ``test`` database."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, func, select, text

from service.ledger import SqlLedger
from service.ledger.schema import TERMINAL, decisions, notices

POSTGRES_URL = os.environ.get("DUNNING_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


def notice_row(notice_id: str, due_at: datetime, **changes: object) -> dict[str, object]:
    """A waiting notice's ledger row, as the intake writes one (``changes`` on top), for
    tests that put notices straight into the ledger."""
    row: dict[str, object] = {
        "notice_id": notice_id, "event_id": f"e-{notice_id}", "step_index": 0, "stage": "m1",
        "channel": "sms", "template": "cn_m1", "locale": "zh-CN", "account_id": "CC-1",
        "debtor_id": "D-1", "escalation_at": due_at, "state": "waiting", "due_at": due_at,
        "attempts": 0, "conversation": False, "created_at": due_at, "updated_at": due_at}
    row.update(changes)
    return row


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """A schema of its own for one test; yields (url, schema) and drops it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = SqlLedger.from_url(POSTGRES_URL)
    await admin.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield POSTGRES_URL, schema
    finally:
        await admin.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.aclose()


@asynccontextmanager
async def ledger_to_cut_off() -> AsyncIterator[tuple[SqlLedger, Callable[[], Awaitable[int]]]]:
    """A PostgreSQL ledger whose every thread holds a connection, and a function that makes
    the server end all of them (how many it ended)."""
    name = f"dunning-{uuid.uuid4().hex[:8]}"
    async with postgres_schema() as (url, schema):
        ledger = SqlLedger.from_url(f"{url}?application_name={name}", schema)
        admin = SqlLedger.from_url(url)

        def backends(conn: Connection) -> int:
            return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE application_name = :name"),
                                    {"name": name}).scalar_one())

        async def cut_off() -> int:
            ended = len(await admin.read(lambda conn: conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name"), {"name": name}).all()))
            # pg_terminate_backend only signals: until each backend has gone, a connection
            # handed out meanwhile may still pass the pool's ping and then be ended mid-query
            async with asyncio.timeout(10):
                while await admin.read(backends):  # noqa: ASYNC110 - the server says when
                    await asyncio.sleep(0.01)
            return ended
        try:
            await ledger.create()
            await every_thread_connected(ledger)
            yield ledger, cut_off
        finally:
            await ledger.aclose()
            await admin.aclose()


async def every_thread_connected(ledger: SqlLedger) -> None:
    """Enough overlapping reads that every ledger thread opens its connection (and keeps it)."""
    def slow_ping(conn: Connection) -> None:
        conn.execute(text("SELECT pg_sleep(0.05)")).all()

    await asyncio.gather(*(ledger.read(slow_ping) for _ in range(16)))


@asynccontextmanager
async def make_ledger(kind: str, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    if kind == "sqlite":
        ledger = SqlLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
        await ledger.create()
        try:
            yield ledger
        finally:
            await ledger.aclose()
        return
    async with postgres_schema() as (url, schema):
        ledger = SqlLedger.from_url(url, schema)
        await ledger.create()
        try:
            yield ledger
        finally:
            await ledger.aclose()


async def ledger_states(ledger: SqlLedger) -> tuple[dict[str, int], Counter[str]]:
    """Notices by state, and terminal decisions by notice."""
    def counts(conn: Connection) -> tuple[dict[str, int], Counter[str]]:
        states = dict(conn.execute(select(notices.c.state, func.count())
                                   .group_by(notices.c.state)).all())
        terminal = Counter(conn.execute(select(decisions.c.notice_id).where(
            decisions.c.status.in_(TERMINAL))).scalars())
        return states, terminal
    return await ledger.read(counts)
