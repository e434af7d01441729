"""Raw ceilings: what the libraries do alone on this machine, with none of the service around.

- aio-pika: consume N persistent 1 KB messages from a quorum queue, one ack each, prefetch 200;
- the twilio SDK: N pre-made messages created at a concurrency of 16;
- aiosmtplib: N pre-built MIME messages sent over a pool of ``DUNNING_SMTP_POOL_SIZE``
  connections.

The SDK and SMTP ceilings send the notice the dispatch stage sends (``sample``, rendered
from the same template and event; see ``stages.sample_notice``), so that both sides of a
ratio send the same bytes and the ratio measures the service's own work per notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from email.mime.multipart import MIMEMultipart

import aio_pika
import aiosmtplib
from aio_pika.abc import AbstractIncomingMessage

from service.bench.common import Stopwatch, publish_all
from service.channels.base import RenderedNotice
from service.channels.email import build_message
from service.channels.twilio_client import TwilioApi
from service.config import Settings
from service.intake import QUORUM

RAW_PREFETCH = 200
SDK_CONCURRENCY = 16
WARM_UP = 20  # requests before the clock starts (connections, lazy imports)


async def raw_consume(settings: Settings, count: int) -> float:
    """Messages a second consumed with a per-message ack."""
    queue_name = f"{settings.queue}.raw"
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)
        await publish_all(channel.default_exchange, queue_name, [b"x" * 1024] * count)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=RAW_PREFETCH)
        queue = await consumer.declare_queue(queue_name, durable=True, arguments=QUORUM)
        done = asyncio.Event()
        acked = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal acked
            await message.ack()
            acked += 1
            if acked >= count:
                done.set()

        watch = Stopwatch()
        tag = await queue.consume(on_message)
        await done.wait()
        rate = watch.rate(count)
        await queue.cancel(tag)
        await channel.queue_delete(queue_name)
    return rate


async def raw_sdk(settings: Settings, count: int, sample: RenderedNotice) -> float:
    """Messages a second created through the twilio SDK, 16 at a time: ``sample``'s text."""
    api = TwilioApi(settings.twilio_account_sid or "", settings.twilio_auth_token or "",
                    api_base=settings.twilio_api_base, timeout_s=settings.provider_timeout_s)
    client = api.client()
    slots = asyncio.Semaphore(SDK_CONCURRENCY)

    async def one(index: int) -> None:
        async with slots:
            await client.messages.create_async(to=f"+86138{index:08d}",
                                               from_=settings.twilio_from, body=sample.parts["text"])

    try:
        await asyncio.gather(*(one(i) for i in range(WARM_UP)))
        watch = Stopwatch()
        await asyncio.gather(*(one(i) for i in range(count)))
        return watch.rate(count)
    finally:
        await api.aclose()


def _messages(settings: Settings, count: int, sample: RenderedNotice) -> list[MIMEMultipart]:
    return [build_message(replace(sample, notice_id=f"raw-{i}", event_id=f"raw-{i}",
                                  destination=f"debtor{i}@example.com"), settings.email_from)
            for i in range(count)]


async def raw_smtp(settings: Settings, count: int, sample: RenderedNotice) -> float:
    """Pre-built messages a second through aiosmtplib over a pool of open connections:
    ``sample``'s message, each with a notice id and an address of its own."""
    clients = [aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port,
                               start_tls=False, use_tls=False)
               for _ in range(settings.smtp_pool_size)]
    await asyncio.gather(*(client.connect() for client in clients))
    try:
        await _send_all(clients, _messages(settings, WARM_UP, sample))
        messages = _messages(settings, count, sample)
        watch = Stopwatch()
        await _send_all(clients, messages)
        return watch.rate(count)
    finally:
        await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)


async def _send_all(clients: list[aiosmtplib.SMTP], messages: list[MIMEMultipart]) -> None:
    pending: Iterator[MIMEMultipart] = iter(messages)

    async def drain(client: aiosmtplib.SMTP) -> None:
        for message in pending:
            await client.send_message(message)

    await asyncio.gather(*(drain(client) for client in clients))
