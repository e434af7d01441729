"""The RabbitMQ side: topology, the consumer with batched ledger writes and acks, dead letters,
and the outcome publisher.

An event is acknowledged only after what it asked for is committed to the ledger; one
``ack(multiple=True)`` covers a whole batch. Bad input is moved to the dead-letter queue
with its reason and never requeued.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.abc import FieldTable

from service.config import Settings
from service.events import BadEvent, Escalated, PaymentReceived, parse_event
from service.ledger import Accepted, Ingest
from service.logs import get_logger
from service.policy import Policy, plan_escalation, plan_payment

log = get_logger("dunning.intake")
QUORUM: FieldTable = {"x-queue-type": "quorum"}
JSON = "application/json"


@dataclass(slots=True)
class Topology:
    channel: AbstractChannel
    events: AbstractExchange
    queue: AbstractQueue
    dead: AbstractQueue
    outcomes: AbstractExchange


async def declare(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare CONTRACT.md §2's topology; idempotent."""
    durable = aio_pika.ExchangeType.TOPIC
    events = await channel.declare_exchange(settings.exchange, durable, durable=True)
    outcomes = await channel.declare_exchange(settings.outcomes_exchange, durable, durable=True)
    queue = await channel.declare_queue(settings.queue, durable=True, arguments=QUORUM)
    await queue.bind(events, routing_key="#")
    dead = await channel.declare_queue(settings.dead_queue, durable=True, arguments=QUORUM)
    return Topology(channel, events, queue, dead, outcomes)


def decide(body: bytes, policy: Policy) -> Accepted:
    """Decode, validate and plan one event; :class:`BadEvent` if it can never be processed."""
    event = parse_event(body)
    steps = []
    if isinstance(event, Escalated):
        steps = plan_escalation(policy, event)
    elif isinstance(event, PaymentReceived):
        steps = plan_payment(policy, event)
    return Accepted(event, event.model_dump_json(), steps)


@dataclass(slots=True)
class IntakeStats:
    consumed: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


class Intake:
    """Consumes ``dunning.dispatch`` in batches: decide, record in one transaction, ack."""

    def __init__(self, settings: Settings, topology: Topology, policy: Policy, ingest: Ingest,
                 now: Callable[[], datetime], on_recorded: Callable[[], None]) -> None:
        self.settings = settings
        self.topology = topology
        self.policy = policy
        self.ingest = ingest
        self.now = now
        self.on_recorded = on_recorded
        self.stats = IntakeStats()
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._tag: str | None = None
        self._stopping = False
        self.attached = False

    async def start(self) -> None:
        await self.topology.channel.set_qos(prefetch_count=self.settings.prefetch)
        self._tag = await self.topology.queue.consume(self._inbox.put, no_ack=False)
        self.attached = True

    async def stop_consuming(self) -> None:
        self._stopping = True
        if self._tag is not None and not self.topology.channel.is_closed:
            await self.topology.queue.cancel(self._tag)
        self._tag = None
        self.attached = False

    async def run(self) -> None:
        """Batch loop: runs until cancelled or, after stop_consuming, until the inbox is empty."""
        while not (self._stopping and self._inbox.empty()):
            batch = await self._next_batch()
            if batch:
                await self._process(batch)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout=0.2)
        except TimeoutError:
            return []
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.settings.intake_flush_s
        while len(batch) < self.settings.intake_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if self._inbox.empty() and remaining <= 0:
                break
            try:
                batch.append(self._inbox.get_nowait() if not self._inbox.empty() else
                             await asyncio.wait_for(self._inbox.get(), timeout=remaining))
            except TimeoutError:
                break
        return batch

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        accepted: list[Accepted] = []
        for message in batch:
            try:
                accepted.append(decide(message.body, self.policy))
            except BadEvent as bad:
                await self._dead_letter(message, bad)
        await self._record(accepted)
        await batch[-1].ack(multiple=True)
        self.stats.consumed += len(batch)
        if accepted:
            self.on_recorded()

    async def _record(self, accepted: list[Accepted]) -> None:
        """Commit the batch; while the ledger is down, keep the messages unacked and retry."""
        delay_s = 0.5
        while accepted:
            try:
                report = await self.ingest.apply(accepted, self.now())
            except Exception as exc:  # noqa: BLE001 - any ledger failure: retry, never drop
                log.error("ledger_write_failed", error=str(exc).splitlines()[0],
                          setting="DUNNING_DATABASE_URL", retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            self.stats.duplicates += report.duplicates
            log.debug("batch_recorded", events=report.new_events, notices=report.notices,
                      duplicates=report.duplicates, cancelled=report.cancelled)
            return

    async def _dead_letter(self, message: AbstractIncomingMessage, bad: BadEvent) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        headers.update({
            "x-dunning-error": bad.code,
            "x-dunning-error-detail": bad.detail,
            "x-dunning-routing-key": message.routing_key or "",
            "x-dunning-dead-at": self.now().isoformat(),
        })
        await self.topology.channel.default_exchange.publish(
            aio_pika.Message(message.body, headers=headers,
                             content_type=message.content_type or JSON,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=message.message_id),
            routing_key=self.settings.dead_queue,
        )
        self.stats.dead[bad.code] = self.stats.dead.get(bad.code, 0) + 1
        log.warning("event_dead_lettered", code=bad.code, detail=bad.detail,
                    routing_key=message.routing_key)


class BrokerOutcomeSink:
    """Publishes outcomes to ``dunning.outcomes`` with publisher confirms, awaited together."""

    def __init__(self, exchange: AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, messages: list[tuple[str, str]]) -> None:
        await asyncio.gather(*(
            self.exchange.publish(
                aio_pika.Message(body.encode(), content_type=JSON,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=key)
            for key, body in messages))


async def publish_events(exchange: AbstractExchange, events: list[dict[str, Any]]) -> None:
    """Publish events (already validated) with confirms, routing key = type."""
    await asyncio.gather(*(
        exchange.publish(
            aio_pika.Message(json.dumps(event, ensure_ascii=False).encode(), content_type=JSON,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=str(event.get("event_id", ""))),
            routing_key=str(event.get("type", "unknown")))
        for event in events))


async def connect(settings: Settings) -> AbstractRobustConnection:
    """Connect to the broker; one clear line naming DUNNING_AMQP_URL if it cannot."""
    # the first attempt's failure is reported below as one line, not as the library's log
    library_logs = [logging.getLogger(name) for name in ("aio_pika", "aiormq")]
    levels = [logger.level for logger in library_logs]
    for logger in library_logs:
        logger.setLevel(logging.CRITICAL)
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            return await aio_pika.connect_robust(settings.amqp_url, timeout=5)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise ConnectionError(f"cannot reach the broker at {redact_url(settings.amqp_url)} "
                              f"({type(exc).__name__}: {exc}); check DUNNING_AMQP_URL") from None
    finally:
        for logger, level in zip(library_logs, levels, strict=True):
            logger.setLevel(level)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
