"""The channel adapter port: what every way of reaching a debtor implements.

A channel adapter turns one :class:`RenderedNotice` into one provider request and
answers with a :class:`Receipt`, or raises one of the errors below. The errors are
named for what the dispatcher must do next, not for what went wrong::

    DeliveryError                     base of everything an adapter may raise
    ├── PermanentDeliveryError        never retry: bad number, refused address, 4xx that
    │                                 will not change (the notice becomes `failed`)
    ├── TransientDeliveryError        retry later with backoff: timeouts, connection
    │                                 refused, 5xx, 429 (``retry_after_s`` when known)
    └── UnknownOutcomeError           the request may have reached the provider; reconcile
                                      before any re-send (CONTRACT.md §4)

Adapters never retry on their own: a retried POST can send twice. Retries go
through the ledger (``due_at``), so they survive a crash and are counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

Channel = Literal["email", "sms", "voice", "letter"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "voice", "letter")


class DeliveryError(Exception):
    """Base of every error a channel adapter raises."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # a short machine code, e.g. "twilio_21211", "smtp_550"
        self.detail = detail


class PermanentDeliveryError(DeliveryError):
    """The provider refused this notice for good; retrying cannot help."""


class TransientDeliveryError(DeliveryError):
    """The provider could not take the notice now; retry later."""

    def __init__(self, reason: str, detail: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


class UnknownOutcomeError(DeliveryError):
    """The request may or may not have reached the provider (e.g. a timeout after sending)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A postal address, as the event gives it."""

    lines: tuple[str, ...]
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedNotice:
    """One notice, rendered and ready for one channel.

    ``destination`` is the email address, the E.164 phone number, or for letters a
    one-line summary of the postal address (the full address is in ``address``).
    ``parts`` holds the rendered template files by kind: ``subject``, ``html`` and
    ``text`` for email; ``text`` for SMS and voice; ``html`` for letters.
    """

    notice_id: str
    event_id: str
    channel: Channel
    template: str
    locale: str
    destination: str
    parts: dict[str, str]
    recipient_name: str = ""
    address: Address | None = None
    sender: dict[str, str] = field(default_factory=dict)
    attempt: int = 1
    claimed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the provider answered: who took it and under which id."""

    provider: str
    provider_id: str


@runtime_checkable
class ChannelAdapter(Protocol):
    """What the dispatcher needs of a channel adapter."""

    @property
    def channel(self) -> Channel:
        """The channel this adapter sends on (a class or an instance attribute will do)."""
        ...

    name: str  # the provider, as recorded in outcomes ("twilio", "smtp", "outbox", …)

    async def send(self, notice: RenderedNotice) -> Receipt:
        """Deliver one notice or raise a :class:`DeliveryError`."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


def message_id_for(notice_id: str, domain: str) -> str:
    """The email Message-ID of a notice: stable, so a re-send is recognisably the same message."""
    return f"<{notice_id}@{domain}>"
