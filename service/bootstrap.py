"""Composition root: the only place that names concrete adapters."""

from __future__ import annotations

import asyncio

from service.channels.base import ChannelAdapter
from service.config import Settings
from service.ratelimit import Rate, RateLimiter, make_limiter
from service.sending import LEASE_MARGIN_S


def build_adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    """One adapter per channel; a channel with no provider configured writes to the outbox."""
    from service.channels.email import SmtpEmailAdapter
    from service.channels.outbox import OutboxAdapter

    adapters: dict[str, ChannelAdapter] = {
        channel: OutboxAdapter(channel, settings.outbox_dir, email_from=settings.email_from)
        for channel in ("email", "sms", "voice", "letter")
    }
    if settings.smtp_host:
        adapters["email"] = SmtpEmailAdapter(settings)
    if settings.twilio_configured:
        adapters["sms"], adapters["voice"] = _twilio_adapters(settings)
    if settings.printmail_url:
        from service.channels.printmail import PrintMailLetterAdapter

        adapters["letter"] = PrintMailLetterAdapter(settings)
    elif settings.letter_spool_dir:
        from service.channels.letter import SpoolLetterAdapter

        adapters["letter"] = SpoolLetterAdapter(settings)
    return adapters


def _twilio_adapters(settings: Settings) -> tuple[ChannelAdapter, ChannelAdapter]:
    """SMS and calls share one Twilio client (one connection pool for one account)."""
    from service.channels.sms import TwilioSmsAdapter
    from service.channels.twilio_client import TwilioApi
    from service.channels.voice import TwilioVoiceAdapter

    api = TwilioApi(settings.twilio_account_sid or "", settings.twilio_auth_token or "",
                    api_base=settings.twilio_api_base, timeout_s=settings.provider_timeout_s)
    callback = status_callback(settings)
    return (TwilioSmsAdapter(settings, status_callback=callback, api=api),
            TwilioVoiceAdapter(settings, status_callback=callback, api=api))


def status_callback(settings: Settings) -> str | None:
    """Where Twilio reports delivery: only when DUNNING_PUBLIC_URL says how it reaches us."""
    return f"{settings.public_base_url}/twilio/status" if settings.public_url else None


def build_limiter(settings: Settings, adapters: dict[str, ChannelAdapter]) -> RateLimiter:
    """Pacing per channel: DUNNING_RATE_<CHANNEL>, else the adapter's default; shared through
    Redis when DUNNING_REDIS_URL is set."""
    rates = {}
    for channel, adapter in adapters.items():
        found = settings.rate_for(channel, getattr(adapter, "default_rate", None))
        if found is not None:
            rates[channel] = Rate(*found)
    return make_limiter(settings.redis_url, rates, namespace=settings.queue)


async def startup_problems(adapters: dict[str, ChannelAdapter],
                           timeout_s: float) -> list[tuple[str, str]]:
    """What adapters find wrong at start (letters without font subsetting, say), as (code,
    sentence) pairs for the log; asking also starts the letter renderer's first process."""
    problems: list[tuple[str, str]] = []
    for channel, adapter in adapters.items():
        check = getattr(adapter, "startup_problems", None)
        if check is None:
            continue
        try:
            async with asyncio.timeout(timeout_s):
                problems.extend(await check())
        except Exception as exc:  # noqa: BLE001 - a start-up check never stops the worker
            problems.append((f"{channel}_check_failed", type(exc).__name__))
    return problems


def settings_problems(settings: Settings) -> list[tuple[str, str]]:
    """Settings that work but weaken a guarantee, as (code, sentence) pairs for the log."""
    problems = []
    if settings.lease_s <= settings.provider_timeout_s + LEASE_MARGIN_S:
        problems.append(("lease_shorter_than_a_send", (
            f"DUNNING_LEASE_S ({settings.lease_s:g} s) is not above DUNNING_PROVIDER_TIMEOUT_S "
            f"({settings.provider_timeout_s:g} s) plus {LEASE_MARGIN_S:g} s: a stalled send can "
            "outlive its lease, and another worker may send the notice again")))
    return problems


def describe(adapters: dict[str, ChannelAdapter]) -> dict[str, str]:
    return {channel: adapter.name for channel, adapter in adapters.items()}
