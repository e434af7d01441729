"""Composition root: the only place that names concrete adapters."""

from __future__ import annotations

from service.channels.base import ChannelAdapter
from service.config import Settings


def build_adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    """One adapter per channel; a channel with no provider configured writes to the outbox."""
    from service.channels.email import SmtpEmailAdapter
    from service.channels.outbox import OutboxAdapter
    from service.channels.sms import TwilioSmsAdapter

    adapters: dict[str, ChannelAdapter] = {
        channel: OutboxAdapter(channel, settings.outbox_dir, email_from=settings.email_from)
        for channel in ("email", "sms", "voice", "letter")
    }
    if settings.smtp_host:
        adapters["email"] = SmtpEmailAdapter(settings)
    if settings.twilio_configured:
        adapters["sms"] = TwilioSmsAdapter(settings)
    return adapters


def describe(adapters: dict[str, ChannelAdapter]) -> dict[str, str]:
    return {channel: adapter.name for channel, adapter in adapters.items()}
