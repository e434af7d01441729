"""The RabbitMQ side: topology, the consumer with batched ledger writes and acks, dead letters,
and the outcome publisher.

An event is acknowledged only after what it asked for is committed to the ledger; one
``ack(multiple=True)`` covers a whole batch. Bad input is moved to the dead-letter queue
with its reason and never requeued.

The intake consumes on the AMQP layer itself (aiormq, beneath aio-pika): for every delivery
aio-pika built a message object (each property converted) and started a task of its own,
15-25 % of the intake's time on the event loop. What aio-pika's robust channel did for its
consumers, the intake does for its own: it consumes again when the channel is reopened
after a lost connection, and when the broker cancels it (the queue deleted, say).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq import spec
from aiormq.abc import AbstractChannel as AmqpChannel
from aiormq.abc import DeliveredMessage, FieldTable

from service import metrics
from service.config import Settings
from service.events import AnyEvent, BadEvent, Escalated, PaymentReceived, parse_event
from service.ledger import Accepted, Ingest
from service.logs import get_logger
from service.outcomes import OutcomeMessage
from service.policy import Policy, plan_escalation, plan_payment

log = get_logger("dunning.intake")
QUORUM: FieldTable = {"x-queue-type": "quorum"}
JSON = "application/json"


@dataclass(slots=True)
class Topology:
    """The names of CONTRACT.md §2, declared on a robust channel: it is reopened after a
    lost connection, and its queue remembers how to declare and bind itself again."""

    channel: AbstractRobustChannel
    events: AbstractExchange
    queue: AbstractRobustQueue
    dead: AbstractRobustQueue
    outcomes: AbstractExchange


async def declare(channel: AbstractRobustChannel, settings: Settings) -> Topology:
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


class Delivery:
    """One delivery of the intake's queue, as the AMQP layer hands it over."""

    __slots__ = ("message",)

    def __init__(self, message: DeliveredMessage) -> None:
        self.message = message

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def routing_key(self) -> str | None:
        return self.message.routing_key

    @property
    def properties(self) -> spec.Basic.Properties:
        return self.message.header.properties

    async def ack_up_to_here(self) -> None:
        """Acknowledge this delivery and every one before it on its channel."""
        tag = self.message.delivery_tag
        assert tag is not None  # a consumer's delivery always has one
        await self.message.channel.basic_ack(tag, multiple=True)


def _decide_or_bad(message: Delivery, policy: Policy) -> Accepted | BadEvent:
    try:
        return decide(message.body, policy)
    except BadEvent as bad:
        return bad


@dataclass(slots=True)
class IntakeStats:
    consumed: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


class Intake:
    """Consumes ``dunning.dispatch`` in batches: decide, record in one transaction, ack."""

    def __init__(self, settings: Settings, topology: Topology, policy: Policy, ingest: Ingest,
                 now: Callable[[], datetime],
                 on_recorded: Callable[[list[AnyEvent]], None]) -> None:
        self.settings = settings
        self.topology = topology
        self.policy = policy
        self.ingest = ingest
        self.now = now
        self.on_recorded = on_recorded
        self.stats = IntakeStats()
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._consuming: tuple[AmqpChannel, str] | None = None  # the channel, the consumer tag
        self._resubscribing: asyncio.Task[None] | None = None
        self._stopping = False
        metrics.CONSUMER_ATTACHED.set_function(lambda: float(self.attached))

    @property
    def attached(self) -> bool:
        """Whether the consumer is attached: for /readyz and dunning_consumer_attached."""
        return self._consuming is not None

    async def start(self) -> None:
        # the robust channel remembers the prefetch and sets it again when it is reopened
        await self.topology.channel.set_qos(prefetch_count=self.settings.prefetch)
        self.topology.channel.reopen_callbacks.add(self._on_reopened)  # consume again then
        await self._consume()

    async def _consume(self) -> None:
        channel = await self.topology.channel.get_underlay_channel()
        channel.on_consumer_cancel_callbacks.add(self._on_cancelled)
        inbox = self._inbox

        async def delivered(message: DeliveredMessage) -> None:
            inbox.put_nowait(Delivery(message))

        ok = await channel.basic_consume(self.topology.queue.name, delivered, no_ack=False)
        assert ok.consumer_tag is not None  # the broker names the consumer it made
        self._consuming = (channel, ok.consumer_tag)

    async def _on_reopened(self, *_: Any) -> None:
        """The connection came back: the channel is new, and so must the consumer be."""
        self._consuming = None
        if not self._stopping:
            await self._consume()
            log.info("consumer_attached_again", queue=self.topology.queue.name)

    def _on_cancelled(self, frame: spec.Basic.Cancel) -> None:
        """The broker cancelled the consumer (the queue was deleted, or moved): declare the
        queue again and consume, retrying until it works or the intake stops."""
        if self._consuming is None or frame.consumer_tag != self._consuming[1]:
            return
        self._consuming = None
        log.warning("consumer_cancelled_by_broker", queue=self.topology.queue.name,
                    setting="DUNNING_QUEUE")
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        delay_s = 0.5
        while not self._stopping and self._consuming is None:
            try:
                # the queue and its binding, as declare() made them: the robust queue
                # remembers both (it has no consumer of its own to restore)
                await self.topology.queue.restore()
                await self._consume()
                log.info("consumer_attached_again", queue=self.topology.queue.name)
                return
            except Exception as exc:  # noqa: BLE001 - the broker may still be recovering
                log.warning("consumer_not_attached", error=type(exc).__name__,
                            retry_in_s=delay_s, setting="DUNNING_AMQP_URL")
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)

    async def stop_consuming(self) -> None:
        self._stopping = True
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        consuming, self._consuming = self._consuming, None
        if consuming is not None and not consuming[0].is_closed:
            await consuming[0].basic_cancel(consuming[1])

    async def run(self) -> None:
        """Batch loop: runs until cancelled or, after stop_consuming, until the inbox is empty.

        A batch is decoded while the one before it is being written; writes and acks stay in
        arrival order (one write at a time), and nothing is acked before it is committed.
        """
        writing: asyncio.Task[None] | None = None
        try:
            while not (self._stopping and self._inbox.empty()):
                batch = await self._next_batch(writing)
                if not batch:
                    continue
                decided = [(message, _decide_or_bad(message, self.policy)) for message in batch]
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self._process(batch, decided))
        except BaseException:
            if writing is not None:
                writing.cancel()  # unacked: the broker redelivers, and recording is idempotent
            raise
        if writing is not None:
            await writing

    async def _next_batch(self, writing: asyncio.Task[None] | None) -> list[Delivery]:
        """What is in the inbox; more only while the previous batch is still being written
        (up to ``intake_flush_s``): an idle ledger takes a lone event at once."""
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout=0.2)
        except TimeoutError:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.intake_flush_s
        while len(batch) < self.settings.intake_batch:
            if not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
                continue
            remaining = deadline - loop.time()
            if writing is None or writing.done() or remaining <= 0:
                break
            getter = asyncio.ensure_future(self._inbox.get())
            await asyncio.wait({getter, writing}, timeout=remaining,
                               return_when=asyncio.FIRST_COMPLETED)
            getter.cancel()
            got = (await asyncio.gather(getter, return_exceptions=True))[0]
            if isinstance(got, BaseException):
                break
            batch.append(got)
        return batch

    async def _process(self, batch: list[Delivery],
                       decided: list[tuple[Delivery, Accepted | BadEvent]]) -> None:
        accepted: list[Accepted] = []
        try:
            for message, result in decided:
                if isinstance(result, BadEvent):
                    await self._dead_letter(message, result)
                else:
                    accepted.append(result)
            recorded = await self._record(accepted)
            await batch[-1].ack_up_to_here()
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # the channel these deliveries came on is gone: the broker redelivers every
            # unacked one on the new channel, and recording them again is a no-op
            log.warning("batch_not_acked", error=type(exc).__name__, messages=len(batch),
                        setting="DUNNING_AMQP_URL")
            return
        self.stats.consumed += len(batch)
        metrics.EVENTS_CONSUMED.inc(len(batch))
        if accepted:
            self.on_recorded(recorded)

    async def _record(self, accepted: list[Accepted]) -> list[AnyEvent]:
        """Commit the batch; while the ledger is down, keep the messages unacked and retry.
        The events that were new."""
        delay_s = 0.5
        while accepted:
            try:
                report = await self.ingest.apply(accepted, self.now())
            except Exception as exc:  # noqa: BLE001 - any ledger failure: retry, never drop
                metrics.LEDGER_ERRORS.labels("intake").inc()
                log.error("ledger_write_failed", error=str(exc).splitlines()[0],
                          setting="DUNNING_DATABASE_URL", retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            self.stats.duplicates += report.duplicates
            log.debug("batch_recorded", events=report.new_events, notices=report.notices,
                      duplicates=report.duplicates, cancelled=report.cancelled)
            return report.recorded
        return []

    async def _dead_letter(self, message: Delivery, bad: BadEvent) -> None:
        properties = message.properties
        headers: dict[str, Any] = dict(properties.headers or {})
        headers.update({
            "x-dunning-error": bad.code,
            "x-dunning-error-detail": bad.detail,
            "x-dunning-routing-key": message.routing_key or "",
            "x-dunning-dead-at": self.now().isoformat(),
        })
        await self.topology.channel.default_exchange.publish(
            aio_pika.Message(message.body, headers=headers,
                             content_type=properties.content_type or JSON,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=properties.message_id),
            routing_key=self.settings.dead_queue,
        )
        self.stats.dead[bad.code] = self.stats.dead.get(bad.code, 0) + 1
        metrics.EVENTS_DEAD.labels(bad.code).inc()
        log.warning("event_dead_lettered", code=bad.code, detail=bad.detail,
                    routing_key=message.routing_key)


class BrokerOutcomeSink:
    """Publishes outcomes to ``dunning.outcomes`` with publisher confirms, awaited together.

    Straight onto the channel's AMQP layer: an outcome needs no message object of its own,
    and not ``mandatory`` (an outcome nobody has bound a queue for is not an error to us).
    Each publish waits for its confirm but not for the socket's buffer to drain first
    (``wait=False``): the broker's confirm comes after the frames anyway, and the relay's
    batch bounds what is buffered. The drain cost 30-50 µs of CPU an outcome here. Each
    carries the message id the relay gives it (see ``outcome_message``), so that consumers can
    drop the duplicates of at-least-once delivery.
    """

    def __init__(self, exchange: AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, messages: list[OutcomeMessage]) -> None:
        # every exchange aio-pika declares has its channel, and that channel aiormq's; the
        # abstract types say neither (nor ``wait``, which aiormq's own channel takes)
        channel = cast(aiormq.Channel, await cast(
            aio_pika.Exchange, self.exchange).channel.get_underlay_channel())
        await asyncio.gather(*(
            channel.basic_publish(body.encode(), exchange=self.exchange.name, routing_key=key,
                                  properties=spec.Basic.Properties(
                                      content_type=JSON, message_id=message_id,
                                      delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                  wait=False)
            for key, body, message_id in messages))


async def publish_events(exchange: AbstractExchange, events: list[dict[str, Any]]) -> None:
    """Publish events (already validated) with confirms, routing key = type."""
    await asyncio.gather(*(
        exchange.publish(
            aio_pika.Message(json.dumps(event, ensure_ascii=False).encode(), content_type=JSON,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=str(event.get("event_id", ""))),
            routing_key=str(event.get("type", "unknown")))
        for event in events))


async def connect(settings: Settings, name: str = "dunning") -> AbstractRobustConnection:
    """Connect to the broker; one clear line naming DUNNING_AMQP_URL if it cannot."""
    # the first attempt's failure is reported below as one line, not as the library's log
    library_logs = [logging.getLogger(name) for name in ("aio_pika", "aiormq")]
    levels = [logger.level for logger in library_logs]
    for logger in library_logs:
        logger.setLevel(logging.CRITICAL)
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            connection = await aio_pika.connect_robust(
                settings.amqp_url, timeout=5,
                client_properties={"connection_name": f"{name} pid {os.getpid()}"})
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise ConnectionError(f"cannot reach the broker at {redact_url(settings.amqp_url)} "
                              f"({type(exc).__name__}: {exc}); check DUNNING_AMQP_URL") from None
    finally:
        for logger, level in zip(library_logs, levels, strict=True):
            logger.setLevel(level)
    return connection


def watch_connection(connection: AbstractRobustConnection) -> None:
    """Log and count losing and regaining the broker (the worker's connection)."""
    connection.close_callbacks.add(_on_lost)
    connection.reconnect_callbacks.add(_on_reconnected)


def _on_lost(_: Any, exc: BaseException | None = None) -> None:
    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        metrics.CONSUMER_ATTACHED.set(0)
        log.warning("broker_connection_lost", error=type(exc).__name__,
                    setting="DUNNING_AMQP_URL", action="reconnecting")


def _on_reconnected(_: Any) -> None:
    metrics.BROKER_RECONNECTS.inc()
    metrics.CONSUMER_ATTACHED.set(1)
    log.info("broker_reconnected")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
