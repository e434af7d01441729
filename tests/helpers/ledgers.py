"""Ledgers for tests: a SQLite file, or a fresh schema in the local PostgreSQL ``test`` database."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.ledger import SqlLedger, async_url

POSTGRES_URL = os.environ.get("DUNNING_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[tuple[str, str]]:
    """A schema of its own for one test; yields (url, schema) and drops it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(async_url(POSTGRES_URL))
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield POSTGRES_URL, schema
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


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
        engine = create_async_engine(async_url(url), connect_args={
            "server_settings": {"search_path": schema}})
        ledger = SqlLedger(engine)
        await ledger.create()
        try:
            yield ledger
        finally:
            await ledger.aclose()
