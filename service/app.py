"""Worker lifecycle: start the ledger, broker, dispatcher, relay and HTTP; SIGTERM drains.

Start-up problems are one line naming the setting to fix (raised as :class:`StartupError`);
resources are closed in the reverse order of opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from contextlib import AsyncExitStack
from typing import Any

from service import bootstrap, metrics
from service.clock import make_clock
from service.config import Settings
from service.dispatcher import Dispatcher
from service.http import make_app, serve
from service.intake import (
    BrokerOutcomeSink,
    Intake,
    connect,
    declare,
    redact_url,
    watch_connection,
)
from service.ledger import Ingest, SqlLedger
from service.ledger.stats import waiting_by_bucket
from service.logs import get_logger
from service.policy import PolicyError, load_policy
from service.relay import OutcomeRelay
from service.rendering import Renderer
from service.webhooks import TwilioWebhooks

log = get_logger("dunning.worker")
STATS_REFRESH_S = 5.0  # how often the waiting-notices gauge is recounted
GC_THRESHOLDS = (700, 10, 100)  # Python's own, but a full collection after 100 middle ones, not 10


class StartupError(Exception):
    """The worker cannot start; the message is one line naming the setting to fix."""


async def open_ledger(settings: Settings) -> SqlLedger:
    ledger = SqlLedger.from_url(settings.database_url, settings.database_schema)
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            await ledger.create()
    except Exception as exc:  # noqa: BLE001 - any failure here is reported as one line
        await ledger.aclose()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartupError(f"cannot open the ledger at {redact_url(settings.database_url)} "
                           f"({first}); check DUNNING_DATABASE_URL") from None
    return ledger


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.now = make_clock(settings.clock_offset_s)
        self.stop = asyncio.Event()
        self.draining = False
        self.intake: Intake | None = None
        self.ledger: SqlLedger | None = None

    async def ready(self) -> str | None:
        if self.draining:
            return "draining"
        if self.intake is None or not self.intake.attached:
            return "consumer not attached"
        if self.intake.topology.channel.is_closed:
            return "broker channel closed"
        try:
            assert self.ledger is not None
            async with asyncio.timeout(2):
                await self.ledger.ping()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return "ledger unreachable"
        return None

    async def run(self) -> None:
        async with AsyncExitStack() as stack:
            try:
                policy = load_policy(self.settings.policy_path)
            except PolicyError as exc:
                raise StartupError(str(exc)) from None
            renderer = Renderer(self.settings.templates_dir, policy.default_locale)
            self.ledger = ledger = await open_ledger(self.settings)
            stack.push_async_callback(ledger.aclose)
            try:
                connection = await connect(self.settings, "dunning-worker")
                watch_connection(connection)
            except ConnectionError as exc:
                raise StartupError(str(exc)) from None
            stack.push_async_callback(connection.close)
            consume_channel = await connection.channel()
            topology = await declare(consume_channel, self.settings)
            publish_channel = await connection.channel(publisher_confirms=True)
            outcomes = await publish_channel.get_exchange(self.settings.outcomes_exchange)
            adapters = bootstrap.build_adapters(self.settings)
            for adapter in adapters.values():
                stack.push_async_callback(adapter.aclose)  # also stops letter render processes
                warm_up = getattr(adapter, "warm_up", None)  # optional: connect, import early
                if warm_up is not None:
                    await warm_up()
            for code, problem in [*bootstrap.settings_problems(self.settings),
                                  *await bootstrap.startup_problems(
                                      adapters, self.settings.startup_timeout_s)]:
                log.warning(code, problem=problem)
            limiter = bootstrap.build_limiter(self.settings, adapters)
            stack.push_async_callback(limiter.aclose)
            webhooks = TwilioWebhooks(ledger, self.settings.twilio_auth_token,
                                      self.settings.public_base_url, self.now)
            runner = await serve(make_app(self.ready, webhooks.routes()),
                                 self.settings.http_host, self.settings.http_port)
            stack.push_async_callback(runner.cleanup)

            relay = OutcomeRelay(ledger, BrokerOutcomeSink(outcomes))
            dispatcher = Dispatcher(self.settings, ledger, policy, renderer, adapters, self.now,
                                    relay.wake.set, limiter)
            self.intake = Intake(self.settings, topology, policy, Ingest(ledger), self.now,
                                 dispatcher.recorded)
            await self._serve(dispatcher, relay, adapters)

    async def _refresh_stats(self) -> None:
        """Keep the waiting-notices gauge fresh for /metrics (each bucket a range of the
        due index, counted)."""
        while True:
            try:
                assert self.ledger is not None
                for due, count in (await waiting_by_bucket(self.ledger, self.now())).items():
                    metrics.WAITING.labels(due).set(count)
            except Exception as exc:  # noqa: BLE001 - a missed refresh is retried next time
                log.warning("stats_refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(STATS_REFRESH_S)

    async def _serve(self, dispatcher: Dispatcher, relay: OutcomeRelay,
                     adapters: dict[str, Any]) -> None:
        assert self.intake is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        tasks = {name: asyncio.create_task(coro, name=name) for name, coro in (
            ("intake", self.intake.run()), ("dispatch", dispatcher.run()), ("relay", relay.run()),
            ("stats", self._refresh_stats()))}
        # what start-up built (modules, templates, the policy) lives as long as the worker:
        # frozen, it is no longer walked by every full collection (a 100 ms pause becomes ~60)
        gc.collect()
        gc.freeze()
        # what it keeps later (parsed events, compiled statements) still is: full collections
        # a tenth as often (at half the bench's capacity, seven in 30 s of 22-59 ms each)
        gc.set_threshold(*GC_THRESHOLDS)
        await self.intake.start()
        log.info("worker_started", queue=self.settings.queue, owner=dispatcher.owner,
                 channels=bootstrap.describe(adapters), http_port=self.settings.http_port)
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait([stopper, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        for name, task in tasks.items():
            if task.done() and not task.cancelled() and task.exception():
                log.error("task_died", task=name, error=repr(task.exception()))
        await self._drain(dispatcher, relay, tasks)

    async def _drain(self, dispatcher: Dispatcher, relay: OutcomeRelay,
                     tasks: dict[str, asyncio.Task[None]]) -> None:
        assert self.intake is not None
        self.draining = True
        log.info("worker_draining", grace_s=self.settings.drain_timeout_s)
        await self.intake.stop_consuming()
        await asyncio.wait([tasks["intake"]], timeout=self.settings.drain_timeout_s)
        released = await dispatcher.drain(self.settings.drain_timeout_s)
        await relay.finish(self.settings.drain_timeout_s)
        await asyncio.wait([tasks["relay"]], timeout=10)
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("worker_stopped", released=released, outcomes_published=relay.published)
