"""SMS through Twilio's Messages API (CONTRACT.md §6a: one message per notice).

The SDK client, its timeout and the mapping of Twilio's errors live in ``twilio_client``;
this adapter adds the body checks and a bound on concurrent requests. Twilio has no
idempotency key for messages: a notice whose request may have arrived ends in
:class:`UnknownOutcomeError`, and the dispatcher reconciles with :meth:`find_messages`
before sending again.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, ClassVar

from twilio.rest import Client

from service.channels.base import (
    Channel,
    PermanentDeliveryError,
    Receipt,
    RenderedNotice,
    UnknownOutcomeError,
)
from service.channels.twilio_client import TwilioApi
from service.config import Settings


class TwilioSmsAdapter:
    """``TwilioSmsAdapter(settings, status_callback=None)``; ``send`` one SMS per notice."""

    channel: ClassVar[Channel] = "sms"
    name = "twilio"
    max_body_chars: ClassVar[int] = 1600  # Twilio refuses longer bodies (error 21617)
    default_rate: ClassVar[str | None] = "10/s"  # DUNNING_RATE_SMS overrides it

    def __init__(
        self,
        settings: Settings,
        *,
        status_callback: str | None = None,
        api: TwilioApi | None = None,
    ) -> None:
        if not settings.twilio_configured or settings.twilio_from is None:
            raise ValueError(
                "set DUNNING_TWILIO_ACCOUNT_SID, DUNNING_TWILIO_AUTH_TOKEN and DUNNING_TWILIO_FROM"
            )
        self._from = settings.twilio_from
        self._status_callback = status_callback
        self._api = api or TwilioApi(
            settings.twilio_account_sid or "",
            settings.twilio_auth_token or "",
            api_base=settings.twilio_api_base,
            timeout_s=settings.provider_timeout_s,
        )
        self._slots = asyncio.Semaphore(settings.twilio_concurrency)

    async def send(self, notice: RenderedNotice) -> Receipt:
        body = notice.parts.get("text", "")
        if not body.strip():
            raise PermanentDeliveryError("empty_body")
        if len(body) > self.max_body_chars:
            raise PermanentDeliveryError("body_too_long", f"{len(body)} characters")
        fields: dict[str, Any] = {"to": notice.destination, "from_": self._from, "body": body}
        if self._status_callback:
            fields["status_callback"] = self._status_callback

        async def create(client: Client) -> Any:
            return await client.messages.create_async(**fields)

        async with self._slots:  # waiting for a slot is not part of the provider timeout
            message = await self._api.call(create, creates=True)
        sid = getattr(message, "sid", None)
        if not isinstance(sid, str) or not sid:
            raise UnknownOutcomeError("twilio_no_sid", "accepted without a message sid")
        return Receipt(provider=self.name, provider_id=sid)

    async def find_messages(self, to: str, from_: str, since: datetime) -> list[dict[str, Any]]:
        """Messages Twilio holds from ``from_`` to ``to`` since ``since`` (reconciliation)."""
        async with self._slots:
            return await self._api.find_messages(to, from_, since)

    async def find_sent(self, notice: RenderedNotice, since: datetime) -> list[Receipt]:
        """Messages this sender already sent to the notice's number with its body (for
        reconciling an unknown outcome)."""
        body = notice.parts.get("text", "")
        found = await self.find_messages(notice.destination, self._from, since)
        return [Receipt(self.name, str(m["sid"])) for m in found if m.get("body") == body]

    async def warm_up(self) -> None:
        """Called once at start-up, inside the running loop."""
        await self._api.warm_up()

    async def aclose(self) -> None:
        await self._api.aclose()
