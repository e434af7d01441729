"""What every stage of the bench shares: sizes, the clock, events, a lag monitor, RSS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractExchange
from prometheus_client.process_collector import ProcessCollector

from service.samples import escalation

T = TypeVar("T")
LAG_INTERVAL_S = 0.01  # the lag monitor sleeps this long and records how late it wakes
PUBLISH_WINDOW = 500  # publisher confirms awaited together, at most this many at once


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measurement does (``--quick`` is a smoke run for CI)."""

    raw: int  # messages for each raw ceiling
    intake: int  # events in the intake backlog
    dispatch: int  # notices per channel
    e2e: int  # events for the end-to-end capacity
    latency_s: float  # seconds of offered load at half capacity
    waiting: int  # deferred notices in the ledger during the end-to-end run
    scaling: int  # events per PostgreSQL run (0: not measured)


FULL = Sizes(raw=5000, intake=5000, dispatch=2000, e2e=2000, latency_s=15.0,
             waiting=100_000, scaling=3000)
QUICK = Sizes(raw=300, intake=300, dispatch=150, e2e=150, latency_s=2.0, waiting=2000,
              scaling=0)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (as ``dunning worker`` does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def loop_kind() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def noon_offset_s() -> float:
    """A clock offset that puts now at 12:00 in Shanghai: every CN contact window is open."""
    now = datetime.now(UTC)
    return (now.replace(hour=4, minute=0, second=0, microsecond=0) - now).total_seconds()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_event(run: str, index: int, channels: Sequence[str] | None = None) -> dict[str, Any]:
    """A CN M1 escalation (an SMS and an email, about 1 KB) of a debtor of its own."""
    event = escalation("m1", "CN")
    event["event_id"] = f"{run}-{index}"
    event["occurred_at"] = datetime.now(UTC).isoformat()
    event["account"]["account_id"] = f"CC-{run}-{index}"
    event["debtor"] = {**event["debtor"], "debtor_id": f"D-{run}-{index}",
                       "email": f"debtor{index}@example.com",
                       "phone": f"+86138{index % 100_000_000:08d}"}
    event["channels"] = list(channels) if channels else None
    return event


def event_body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


async def publish_all(exchange: AbstractExchange, routing_key: str,
                      bodies: Sequence[bytes]) -> None:
    """Persistent messages with publisher confirms, in windows of ``PUBLISH_WINDOW``."""
    for start in range(0, len(bodies), PUBLISH_WINDOW):
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(body, content_type="application/json",
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=routing_key)
            for body in bodies[start:start + PUBLISH_WINDOW]))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class LagMonitor:
    """Sleeps ``LAG_INTERVAL_S`` in a loop and records how late it woke (unix time, lag s)."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_INTERVAL_S
            await asyncio.sleep(LAG_INTERVAL_S)
            self.samples.append((time.time(), max(loop.time() - expected, 0.0)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def p99_ms(self, since: float = 0.0, until: float = float("inf")) -> float:
        return lag_p99_ms(self.samples, since, until)


def lag_p99_ms(samples: Sequence[Sequence[float]], since: float = 0.0,
               until: float = float("inf")) -> float:
    return 1000 * percentile([lag for at, lag in samples if since <= at <= until], 0.99)


def rss_mb(pid: int | None = None) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc (0.0 where it cannot be read)."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in found:
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return found["VmRSS"], found["VmHWM"]


def cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds a process has used, user and system, as prometheus-client reads them for
    ``process_cpu_seconds_total`` (None where /proc cannot tell)."""
    collector = ProcessCollector(pid=lambda: pid or os.getpid(), registry=None)
    for family in collector.collect():
        if family.name == "process_cpu_seconds":
            return float(family.samples[0].value)
    return None


def per_event_ms(before: float | None, after: float | None, events: int) -> float | None:
    """CPU milliseconds an event between two readings of :func:`cpu_s`."""
    if before is None or after is None or events <= 0:
        return None
    return 1000 * (after - before) / events


def core_percent(before: float | None, after: float | None, seconds: float) -> float | None:
    """The share of one core used between two readings of :func:`cpu_s`, ``seconds`` apart."""
    if before is None or after is None or seconds <= 0:
        return None
    return 100 * (after - before) / seconds


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def rate(self, count: int) -> float:
        elapsed = time.perf_counter() - self.started
        return count / elapsed if elapsed > 0 else 0.0
