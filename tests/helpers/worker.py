"""`dunning worker` as a real subprocess, and the broker side a test sees (publish, outcomes,
dead letters), on unique queue and exchange names per test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

ROOT = Path(__file__).parent.parent.parent
SAMPLES = ROOT / "tests" / "samples"
AMQP_URL = os.environ.get("DUNNING_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def offset_to(moment: datetime) -> float:
    """DUNNING_CLOCK_OFFSET_S that makes a worker's now ``moment`` (it runs on from there)."""
    return (moment - datetime.now(UTC)).total_seconds()


# Every worker of a test session runs on one shifted clock: 13:30 UTC of the day the session
# started, when both the CN (08:00-22:00 Shanghai) and US (08:00-21:00 New York) contact
# windows are open, so no test depends on when it runs. Tests of quiet hours set their own.
SESSION_NOW = datetime.now(UTC).replace(hour=13, minute=30, second=0, microsecond=0)
SESSION_OFFSET_S = offset_to(SESSION_NOW)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def names(prefix: str) -> dict[str, str]:
    return {
        "DUNNING_EXCHANGE": f"{prefix}.events",
        "DUNNING_QUEUE": f"{prefix}.dispatch",
        "DUNNING_DEAD_QUEUE": f"{prefix}.dead",
        "DUNNING_OUTCOMES_EXCHANGE": f"{prefix}.outcomes",
    }


class WorkerProcess:
    """One worker process with its own settings; logs go to a file the test can read."""

    def __init__(self, workdir: Path, prefix: str, **settings: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"worker-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        self.env.update(names(prefix))
        self.env.update({
            "DUNNING_AMQP_URL": AMQP_URL,
            "DUNNING_DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}",
            "DUNNING_TEMPLATES_DIR": str(ROOT / "templates"),
            "DUNNING_OUTBOX_DIR": str(workdir / "outbox"),
            "DUNNING_HTTP_PORT": str(self.port),
            "DUNNING_HTTP_HOST": "127.0.0.1",
            "DUNNING_LOG_FORMAT": "json",
            "DUNNING_RETRY_BASE_S": "0.2",
            "DUNNING_DISPATCH_POLL_S": "0.1",
            "DUNNING_CLOCK_OFFSET_S": str(SESSION_OFFSET_S),
        })
        self.env.update(settings)
        if self.env.get("DUNNING_PUBLIC_URL") == "auto":
            self.env["DUNNING_PUBLIC_URL"] = self.url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=self.env,
                                     cwd=self.workdir, stdout=log, stderr=log)
        log.close()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            if self.http_status("/readyz") == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.logs()}")

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def http_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path.exists() else ""

    async def logged(self, text: str, timeout_s: float = 15.0) -> bool:
        """Wait until ``text`` is in the worker's logs; whether it came in time."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while text not in self.logs():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def cut_broker_connections(self) -> int:
        """Close this worker's AMQP connections from the broker's side (rabbitmqctl)."""
        assert self.proc is not None

        def ctl(*args: str) -> str:
            return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                                  timeout=60, check=True).stdout

        mine = f"pid {self.proc.pid}"
        names = {c["name"] for c in json.loads(ctl("list_connections", "name",
                                                   "client_properties", "--formatter", "json"))
                 if any(p[0] == "connection_name" and str(p[2]).endswith(mine)
                        for p in c["client_properties"])}
        closed = 0
        for line in ctl("list_connections", "pid", "name").splitlines()[1:]:
            pid, name = line.split("\t", 1)
            if name in names:
                ctl("close_connection", pid, "fault test")
                closed += 1
        return closed

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Broker:
    """The test's own connection: publishes events, collects outcomes and dead letters."""

    def __init__(self, prefix: str) -> None:
        self.names = names(prefix)
        self.outcomes: list[dict[str, Any]] = []
        self.outcome_keys: list[str] = []
        self.outcome_ids: list[str | None] = []  # each outcome's AMQP message id
        self.connection: AbstractRobustConnection | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Broker:
        self.connection = await aio_pika.connect_robust(AMQP_URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        topic = aio_pika.ExchangeType.TOPIC
        self.events = await self.channel.declare_exchange(self.names["DUNNING_EXCHANGE"], topic,
                                                          durable=True)
        outcomes = await self.channel.declare_exchange(self.names["DUNNING_OUTCOMES_EXCHANGE"],
                                                       topic, durable=True)
        # a named, durable queue: outcomes published while this connection is cut still wait
        self.outcome_queue = await self.channel.declare_queue(
            f"{self.names['DUNNING_OUTCOMES_EXCHANGE']}.test", durable=True)
        await self.outcome_queue.bind(outcomes, "#")
        await self.outcome_queue.consume(self._on_outcome, no_ack=True)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        for queue in ("DUNNING_QUEUE", "DUNNING_DEAD_QUEUE"):
            await channel.queue_delete(self.names[queue])
        await channel.queue_delete(f"{self.names['DUNNING_OUTCOMES_EXCHANGE']}.test")
        for exchange in ("DUNNING_EXCHANGE", "DUNNING_OUTCOMES_EXCHANGE"):
            await channel.exchange_delete(self.names[exchange])
        await self.connection.close()

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        self.outcomes.append(json.loads(message.body))
        self.outcome_keys.append(message.routing_key or "")
        self.outcome_ids.append(message.message_id)
        self._arrived.set()

    async def publish_raw(self, body: bytes, routing_key: str) -> None:
        await self.events.publish(aio_pika.Message(
            body, content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=routing_key)

    async def publish(self, *events: dict[str, Any]) -> None:
        await asyncio.gather(*(self.publish_raw(json.dumps(e, ensure_ascii=False).encode(),
                                                str(e.get("type", "x"))) for e in events))

    async def publish_sample(self, name: str, **changes: Any) -> dict[str, Any]:
        event = sample(name, **changes)
        await self.publish(event)
        return event

    async def wait_outcomes(self, count: int, timeout_s: float = 20.0,
                            terminal: bool = False) -> list[dict[str, Any]]:
        """Wait until ``count`` outcomes (terminal ones only, if asked) have arrived."""
        def seen() -> list[dict[str, Any]]:
            return [o for o in self.outcomes if not terminal or o["status"] != "deferred"]
        return await self._wait(seen, count, timeout_s)

    async def wait_notices(self, count: int, timeout_s: float = 20.0) -> set[str]:
        """Wait until ``count`` distinct notices have a terminal outcome (repeats count once)."""
        def seen() -> list[str]:
            return list({o["notice_id"] for o in self.outcomes if o["status"] != "deferred"})
        return set(await self._wait(seen, count, timeout_s))

    async def _wait(self, seen: Callable[[], list[Any]], count: int,
                    timeout_s: float) -> list[Any]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(seen()) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{len(seen())} of {count} outcomes after {timeout_s} s: "
                                     f"{self.outcomes}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                pass
        return seen()

    async def dead_letters(self, count: int, timeout_s: float = 10.0) -> list[AbstractIncomingMessage]:
        queue = await self.channel.declare_queue(self.names["DUNNING_DEAD_QUEUE"], durable=True,
                                                 arguments={"x-queue-type": "quorum"})
        found: list[AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(found) < count and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
            else:
                found.append(message)
        return found


def sample(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    data.update(changes)
    return data


def us_burst(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` US early escalations, each of an account, a phone and an email of its own."""
    events = []
    for i in range(count):
        event = sample("escalated_early_us.json", event_id=f"evt-{tag}-{i:04d}")
        event["account"] = {**event["account"], "account_id": f"CC-{tag}-{i:04d}"}
        event["debtor"] = {**event["debtor"], "phone": f"+1202555{i:04d}",
                           "email": f"{tag}{i}@example.org"}
        events.append(event)
    return events


def by_channel(outcomes: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["channel"]: o for o in outcomes}


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`dunning ARGS…` in a subprocess, without blocking the test's event loop."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "service", *args], capture_output=True, text=True,
        env=env, timeout=60, check=False)
