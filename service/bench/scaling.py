"""One worker process against two, sharing a PostgreSQL ledger (end-to-end capacity).

Each run gets a schema of its own in the database of ``DUNNING_BENCH_POSTGRES_URL`` (by
default ``DUNNING_DATABASE_URL`` when that is PostgreSQL, else the local ``test`` database),
dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text

from service.bench.common import free_port
from service.bench.e2e import OutcomeWatcher, WorkerProcess, capacity
from service.bench.env import BenchEnv
from service.ledger import SqlLedger

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True, slots=True)
class Scaling:
    one_per_s: float | None
    two_per_s: float | None
    note: str


def postgres_url(env: BenchEnv) -> str:
    configured = env.base.database_url
    fallback = configured if configured.startswith(("postgresql://", "postgres://")) \
        else LOCAL_POSTGRES
    return os.environ.get("DUNNING_BENCH_POSTGRES_URL", fallback)


@asynccontextmanager
async def schema(url: str) -> AsyncIterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = SqlLedger.from_url(url)
    try:
        await admin.execute(text(f'CREATE SCHEMA "{name}"'))
        yield name
    finally:
        await admin.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        await admin.aclose()


async def _capacity_with(env: BenchEnv, url: str, workers: int, count: int) -> float:
    async with schema(url) as name:
        settings = env.settings(f"pg{workers}", database_url=url, database_schema=name)
        processes = []
        for index in range(workers):
            port = free_port()
            one = settings.model_copy(update={"http_port": port})
            lag_file = env.workdir / f"lag-pg{workers}-{index}.json"
            processes.append(WorkerProcess(env.worker_env(one, lag_file), env.workdir,
                                           port).start())
        watcher = OutcomeWatcher(settings)
        try:
            for process in processes:
                await process.ready()
            await watcher.open()
            return await capacity(watcher, f"{env.run}-pg{workers}", count)
        finally:
            await watcher.close()
            for process in processes:
                process.stop()


async def measure_scaling(env: BenchEnv, count: int) -> Scaling:
    if count <= 0:
        return Scaling(None, None, "not measured (--quick)")
    url = postgres_url(env)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return Scaling(None, None, "not measured: pip install 'dunning[postgres]'")
    one = await _capacity_with(env, url, 1, count)
    two = await _capacity_with(env, url, 2, count)
    return Scaling(one, two, f"{two / one:.2f}x with two workers on {os.cpu_count()} cores")
