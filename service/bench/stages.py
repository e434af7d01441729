"""Intake and dispatch, measured in this process against the real components.

Both run here rather than in a worker subprocess so that each stage is timed alone: the
intake with no dispatcher claiming beside it, the dispatcher on a backlog already in the
ledger. They use the worker's own classes (``Intake``, ``Ingest``, ``Dispatcher``,
``OutcomeRelay``, the adapters ``bootstrap`` builds) on a temporary SQLite ledger, the
local SMTP and Twilio responders and the configured RabbitMQ; the event-loop lag of the
dispatch run is sampled in this same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from service import bootstrap
from service.app import open_ledger
from service.bench.common import LagMonitor, Stopwatch, event_body, make_event, publish_all
from service.channels.base import ChannelAdapter, RenderedNotice
from service.clock import make_clock
from service.compose import Composer
from service.config import Settings
from service.dispatcher import Dispatcher
from service.events import Escalated
from service.intake import BrokerOutcomeSink, Intake, connect, decide, declare
from service.ledger import Ingest, SqlLedger
from service.policy import Policy
from service.relay import OutcomeRelay
from service.rendering import Renderer
from service.rules import destination_for

POLL_S = 0.005  # how often a stage checks whether it is done
SEED_BATCH = 500


@dataclass(frozen=True, slots=True)
class DispatchResult:
    per_s: float
    lag_p99_ms: float
    sent: int


async def _wait_for(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not done():  # noqa: ASYNC110 - polls counters the stages own, no event to wait on
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise RuntimeError(f"{what} did not finish in {timeout_s:g} s") from None


async def intake_stage(settings: Settings, policy: Policy, run: str, count: int) -> float:
    """Events a second from a backlog in the queue to the ledger, acked."""
    ledger = await open_ledger(settings)
    connection = await connect(settings, "dunning-bench")
    try:
        topology = await declare(await connection.channel(), settings)
        publisher = await connection.channel(publisher_confirms=True)
        exchange = await publisher.get_exchange(settings.exchange)
        await publish_all(exchange, "delinquency.escalated",
                          [event_body(make_event(run, i)) for i in range(count)])
        intake = Intake(settings, topology, policy, Ingest(ledger),
                        make_clock(settings.clock_offset_s), lambda _recorded: None)
        task = asyncio.create_task(intake.run())
        watch = Stopwatch()
        await intake.start()
        await _wait_for(lambda: intake.stats.consumed >= count, 300, "intake")
        rate = watch.rate(count)
        await intake.stop_consuming()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        waiting = (await ledger.counts_by_state()).get("waiting", 0)
        if waiting != 2 * count:
            raise RuntimeError(f"intake recorded {waiting} notices for {count} events")
        return rate
    finally:
        await connection.close()
        await ledger.aclose()


async def seed(ledger: SqlLedger, policy: Policy, now: Callable[[], datetime], run: str,
               count: int, channels: Sequence[str] | None = None) -> None:
    """``count`` events straight into the ledger, as the intake records them."""
    ingest = Ingest(ledger)
    for start in range(0, count, SEED_BATCH):
        batch = [decide(event_body(make_event(run, i, channels)), policy)
                 for i in range(start, min(start + SEED_BATCH, count))]
        await ingest.apply(batch, now())


def sample_notice(policy: Policy, renderer: Renderer, now: datetime, channel: str,
                  run: str = "sample") -> RenderedNotice:
    """The notice the dispatch stage sends on ``channel``, rendered as the dispatcher renders
    it (same template, same kind of event, a debtor of its own): what the raw ceilings send."""
    accepted = decide(event_body(make_event(run, 0, [channel])), policy)
    event = accepted.event
    if not isinstance(event, Escalated) or not accepted.steps:
        raise RuntimeError(f"the bench's events plan no {channel} notice")
    destination = destination_for(channel, event.debtor.model_dump()).value
    if destination is None:
        raise RuntimeError(f"the bench's events have no {channel} destination")
    notice = Ingest.notice_rows(accepted, event.account.account_id, event.debtor.debtor_id,
                                event.debtor.locale, now)[0] | {"claimed_at": now}
    return Composer(policy, renderer).render(notice, event, event, destination, now)


def warm_templates(renderer: Renderer, template: str) -> None:
    """Compile a notice's templates before the clock starts (Jinja2 caches them)."""
    for name in renderer.env.list_templates():
        if name.startswith((f"{template}/", "_layouts/")):
            renderer.env.get_template(name)


async def _start_adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    adapters = bootstrap.build_adapters(settings)
    for adapter in adapters.values():
        warm_up = getattr(adapter, "warm_up", None)
        if warm_up is not None:
            await warm_up()
    return adapters


async def dispatch_stage(settings: Settings, policy: Policy, renderer: Renderer, run: str,
                         channel: str, count: int) -> DispatchResult:
    """Notices a second of one channel through rules, render, send, record and outcome."""
    now = make_clock(settings.clock_offset_s)
    ledger = await open_ledger(settings)
    await seed(ledger, policy, now, run, count, [channel])
    warm_templates(renderer, "cn_m1")
    connection = await connect(settings, "dunning-bench")
    adapters = await _start_adapters(settings)
    lag = LagMonitor()
    try:
        await declare(await connection.channel(), settings)
        publisher = await connection.channel(publisher_confirms=True)
        relay = OutcomeRelay(ledger, BrokerOutcomeSink(
            await publisher.get_exchange(settings.outcomes_exchange)))
        dispatcher = Dispatcher(settings, ledger, policy, renderer, adapters, now,
                                relay.wake.set, bootstrap.build_limiter(settings, adapters))
        lag.start()
        watch = Stopwatch()
        tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(relay.run())]
        await _wait_for(lambda: relay.published >= count, 600, "dispatch")
        rate = watch.rate(count)
        await lag.stop()
        await dispatcher.drain(10)
        await relay.finish(10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sent = (await ledger.counts_by_state()).get("sent", 0)
        return DispatchResult(rate, lag.p99_ms(), sent)
    finally:
        await lag.stop()
        for adapter in adapters.values():
            await adapter.aclose()
        await connection.close()
        await ledger.aclose()
