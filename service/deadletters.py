"""`dunning dead list` and `dunning dead replay`: inspect and re-publish dead letters."""

from __future__ import annotations

import json
from typing import Any, TextIO

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from service.config import Settings
from service.intake import JSON, connect, declare


def _event_id(message: AbstractIncomingMessage) -> str | None:
    try:
        data = json.loads(message.body)
    except ValueError:
        return None
    return str(data.get("event_id")) if isinstance(data, dict) else None


def _summary(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    return {
        "event_id": _event_id(message),
        "error": headers.get("x-dunning-error"),
        "detail": headers.get("x-dunning-error-detail"),
        "routing_key": headers.get("x-dunning-routing-key"),
        "dead_at": headers.get("x-dunning-dead-at"),
        "bytes": len(message.body),
    }


async def _take_all(settings: Settings) -> tuple[Any, Any, list[AbstractIncomingMessage]]:
    """Every dead letter, fetched unacked: closing the channel puts back what was not acked."""
    connection = await connect(settings)
    channel = await connection.channel(publisher_confirms=True)
    topology = await declare(channel, settings)
    messages = []
    while (message := await topology.dead.get(no_ack=False, fail=False)) is not None:
        messages.append(message)
    return connection, topology, messages


async def list_dead(settings: Settings, out: TextIO) -> None:
    connection, _, messages = await _take_all(settings)
    async with connection:
        for message in messages:
            out.write(json.dumps(_summary(message), ensure_ascii=False, default=str) + "\n")


async def replay_dead(settings: Settings, only_id: str | None) -> int:
    connection, topology, messages = await _take_all(settings)
    replayed = 0
    async with connection:
        for message in messages:
            if only_id is not None and _event_id(message) != only_id:
                continue
            headers = message.headers or {}
            key = str(headers.get("x-dunning-routing-key") or "replayed")
            await topology.events.publish(
                aio_pika.Message(message.body, content_type=JSON,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 headers={"x-dunning-replayed": "true"}),
                routing_key=key)
            await message.ack()
            replayed += 1
    return replayed
