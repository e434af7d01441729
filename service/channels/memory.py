"""The in-memory twin of a channel adapter, for tests: records what it is asked to send.

``MemoryAdapter("sms")`` accepts every notice (receipts ``mem-1``, ``mem-2``, …) unless told
to fail: ``fail_next(2, TransientDeliveryError, "smtp_451")`` makes the next two sends raise.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from service.channels.base import (
    CHANNELS,
    Channel,
    DeliveryError,
    Receipt,
    RenderedNotice,
    TransientDeliveryError,
)


class MemoryAdapter:
    """``MemoryAdapter(channel, name="memory")``.
    """

    max_body_chars: ClassVar[int | None] = None
    default_rate: ClassVar[str | None] = None

    def __init__(self, channel: Channel, name: str = "memory") -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        self.channel: Channel = channel
        self.name = name
        self.sent: list[RenderedNotice] = []
        self.receipts: list[Receipt] = []
        self.attempts = 0  # every call of send, failed or not
        self.closed = False
        self._failures: deque[DeliveryError] = deque()

    def fail_next(
        self,
        n: int = 1,
        error: type[DeliveryError] = TransientDeliveryError,
        reason: str = "injected_failure",
    ) -> None:
        """Make the next ``n`` sends raise ``error(reason)`` without recording the notice."""
        self._failures.extend(error(reason) for _ in range(n))

    async def send(self, notice: RenderedNotice) -> Receipt:
        self.attempts += 1
        if self._failures:
            raise self._failures.popleft()
        self.sent.append(notice)
        receipt = Receipt(provider=self.name, provider_id=f"mem-{len(self.sent)}")
        self.receipts.append(receipt)
        return receipt

    def sent_to(self, destination: str) -> list[RenderedNotice]:
        return [notice for notice in self.sent if notice.destination == destination]

    async def aclose(self) -> None:
        self.closed = True
