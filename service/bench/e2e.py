"""End to end through the real worker as a subprocess: capacity, latency, lag, memory.

The worker (``service.bench.worker``: ``dunning worker`` plus a lag monitor) runs in a
process of its own, as in production; this process publishes CN M1 events (an SMS and an
email each) and listens to ``dunning.outcomes``. An event is done when both its notices
have the outcome ``sent``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import insert

from service.bench.common import (
    Stopwatch,
    cpu_s,
    event_body,
    make_event,
    percentile,
    publish_all,
    rss_mb,
)
from service.clock import make_clock
from service.config import Settings
from service.ledger import SqlLedger
from service.ledger.schema import WAITING, notices

ROUTING_KEY = "delinquency.escalated"
NOTICES_PER_EVENT = 2


class WorkerProcess:
    """``python -m service.bench.worker`` with the given environment; logs to a file."""

    def __init__(self, env: dict[str, str], workdir: Path, port: int) -> None:
        self.env = env
        self.port = port
        self.lag_file = Path(env["DUNNING_BENCH_LAG_FILE"])
        self.log_path = workdir / f"worker-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.bench.worker"], env=self.env,
                stdout=log, stderr=log)
        return self

    async def ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if await asyncio.to_thread(self._ready_now):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the worker was not ready in {timeout_s:g} s (log: {self.log_path})")

    def _ready_now(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def rss_mb(self) -> tuple[float, float]:
        return rss_mb(self.proc.pid) if self.proc is not None else (0.0, 0.0)

    def cpu_s(self) -> float | None:
        return cpu_s(self.proc.pid) if self.proc is not None else None

    def stop(self) -> list[list[float]]:
        """SIGTERM, wait, and return the lag samples the worker wrote."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.lag_file.exists():
            return []
        samples: list[list[float]] = json.loads(self.lag_file.read_text(encoding="utf-8"))
        return samples


@dataclass
class OutcomeWatcher:
    """Publishes events and records when both notices of each event were sent."""

    settings: Settings
    published_at: dict[str, float] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    _sent: dict[str, int] = field(default_factory=dict)
    connection: AbstractRobustConnection | None = None
    exchange: AbstractExchange | None = None

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.settings.amqp_url)
        channel = await self.connection.channel(publisher_confirms=True)
        topic = aio_pika.ExchangeType.TOPIC
        self.exchange = await channel.declare_exchange(self.settings.exchange, topic,
                                                       durable=True)
        outcomes = await channel.declare_exchange(self.settings.outcomes_exchange, topic,
                                                  durable=True)
        queue = await channel.declare_queue(f"{self.settings.outcomes_exchange}.bench",
                                            auto_delete=True)
        await queue.bind(outcomes, "sent.#")
        await queue.consume(self._on_outcome, no_ack=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        event_id = json.loads(message.body)["event_id"]
        seen = self._sent[event_id] = self._sent.get(event_id, 0) + 1
        if seen == NOTICES_PER_EVENT:
            self.done_at[event_id] = time.perf_counter()

    async def publish(self, events: list[dict[str, Any]]) -> None:
        assert self.exchange is not None
        stamp = time.perf_counter()
        for event in events:
            self.published_at[event["event_id"]] = stamp
        await publish_all(self.exchange, ROUTING_KEY, [event_body(e) for e in events])

    async def wait_done(self, event_ids: list[str], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not all(e in self.done_at for e in event_ids):  # noqa: ASYNC110 - a poll
                await asyncio.sleep(0.01)

    def latencies_ms(self, event_ids: list[str]) -> list[float]:
        return [1000 * (self.done_at[e] - self.published_at[e]) for e in event_ids
                if e in self.done_at]


async def capacity(watcher: OutcomeWatcher, run: str, count: int) -> float:
    """Events a second from publish to both outcomes sent, for a burst of ``count``."""
    events = [make_event(run, i) for i in range(count)]
    watch = Stopwatch()
    await watcher.publish(events)
    await watcher.wait_done([e["event_id"] for e in events], timeout_s=300)
    return watch.rate(count)


@dataclass(frozen=True, slots=True)
class Latency:
    offered_per_s: float
    p50_ms: float
    p99_ms: float
    started: float  # unix time, for the lag samples of the window
    ended: float
    events: int  # published in the window


async def latency(watcher: OutcomeWatcher, run: str, rate: float, seconds: float) -> Latency:
    """Publish one event every 1/rate s for ``seconds``; latency per event to both sent."""
    count = max(int(rate * seconds), 1)
    events = [make_event(run, i) for i in range(count)]
    started, loop = time.time(), asyncio.get_running_loop()
    origin = loop.time()
    pending: list[asyncio.Task[None]] = []
    for index, event in enumerate(events):
        delay = origin + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(watcher.publish([event])))
    await asyncio.gather(*pending)
    ids = [e["event_id"] for e in events]
    await watcher.wait_done(ids, timeout_s=120)
    values = watcher.latencies_ms(ids)
    return Latency(rate, percentile(values, 0.5), percentile(values, 0.99), started, time.time(),
                   count)


async def seed_waiting(settings: Settings, count: int, run: str) -> None:
    """``count`` notices deferred to tomorrow (quiet hours), straight into the ledger."""
    ledger = SqlLedger.from_url(settings.database_url, settings.database_schema)
    await ledger.create()
    now = make_clock(settings.clock_offset_s)()
    later = now + timedelta(days=1)
    try:
        for start in range(0, count, 5000):
            rows = [{"notice_id": f"w-{run}-{i}", "event_id": f"w-{run}-{i // 2}",
                     "step_index": i % 2, "stage": "m1", "channel": ("sms", "email")[i % 2],
                     "template": "cn_m1", "locale": "zh-CN", "account_id": f"CC-w-{i // 2}",
                     "debtor_id": f"D-w-{i // 2}", "escalation_at": now, "state": WAITING,
                     "reason": "quiet_hours", "due_at": later, "attempts": 0,
                     "conversation": False, "created_at": now, "updated_at": now}
                    for i in range(start, min(start + 5000, count))]
            await ledger.execute(insert(notices), rows)
    finally:
        await ledger.aclose()
