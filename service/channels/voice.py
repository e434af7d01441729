"""Voice calls through Twilio's Calls API (CONTRACT.md §6a: one call per notice).

The call carries its TwiML inline (``Twiml``), built from ``voice.txt.j2``: the script's
paragraphs are separated by blank lines; all but the last are the message, read, paused
on, and read again; the last paragraph is the closing (the hotline), read once. A script
of one paragraph is the message alone. Every word is the template's: the adapter adds
only ``<Say>`` and ``<Pause>``, so what ``dunning templates check`` and compliance review
see is what is spoken (US scripts are Regulation F limited-content messages).

The TwiML is built with ``xml.etree`` (every text node and attribute escaped, characters
XML cannot carry dropped), never by concatenating strings. The SDK client, its timeout and
the error mapping are ``twilio_client``'s, as for SMS; calls have no idempotency key, so a
call whose request may have arrived ends in :class:`UnknownOutcomeError` and is reconciled
with :meth:`TwilioVoiceAdapter.find_sent` before it is placed again.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
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

MAX_TWIML_CHARS = 4000  # Twilio refuses a longer Twiml parameter
PAUSE_S = 2  # between the message and its repetition
CALL_TIME_LIMIT_S = 300  # a notice call never runs longer (a stuck call costs money)
# <Say language="…"> by the notice's locale; the first match of a prefix wins
TTS_LANGUAGES = (("zh-TW", "cmn-TW"), ("zh-HK", "yue-HK"), ("zh", "cmn-CN"), ("en-GB", "en-GB"),
                 ("en-AU", "en-AU"), ("en", "en-US"))
# characters XML 1.0 cannot carry at all (control characters, lone surrogates, U+FFFE/FFFF)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
CJK_START = "\u2e80"  # from here on, scripts written without spaces between words


def tts_language(locale: str) -> str:
    """The ``<Say language>`` of a locale: ``cmn-CN`` for Mandarin, ``en-US`` for English."""
    for prefix, language in TTS_LANGUAGES:
        if locale == prefix or locale.startswith(prefix + "-"):
            return language
    return locale


def _joined(lines: list[str]) -> str:
    """Lines as one text: a space between words, none after Chinese punctuation or characters."""
    text = ""
    for line in (line.strip() for line in lines):
        if line:
            text += (" " if text and text[-1] < CJK_START else "") + line
    return text


def split_script(script: str) -> tuple[str, str]:
    """(message, closing) of a voice script: the paragraphs before the last, and the last."""
    blocks = _PARAGRAPHS.split(_NOT_XML.sub("", script).strip())
    paragraphs = [text for text in (_joined(block.splitlines()) for block in blocks) if text]
    if len(paragraphs) < 2:
        return (paragraphs[0] if paragraphs else ""), ""
    return _joined(paragraphs[:-1]), paragraphs[-1]


def build_twiml(script: str, language: str, voice: str | None = None) -> str:
    """The TwiML of one call: the message, a pause, the message again, the closing."""
    message, closing = split_script(script)
    if not message:
        raise PermanentDeliveryError("empty_script")
    say = {"language": language, **({"voice": voice} if voice else {})}
    response = ET.Element("Response")
    ET.SubElement(response, "Say", say).text = message
    ET.SubElement(response, "Pause", {"length": str(PAUSE_S)})
    ET.SubElement(response, "Say", say).text = message
    if closing:
        ET.SubElement(response, "Say", say).text = closing
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


class TwilioVoiceAdapter:
    """``TwilioVoiceAdapter(settings, status_callback=None, api=None)``; one call per notice."""

    channel: ClassVar[Channel] = "voice"
    name = "twilio"
    max_body_chars: ClassVar[int] = MAX_TWIML_CHARS  # of the TwiML, markup included
    default_rate: ClassVar[str | None] = "1/s"  # Twilio's default: one new call a second

    def __init__(self, settings: Settings, *, status_callback: str | None = None,
                 api: TwilioApi | None = None) -> None:
        if not settings.twilio_configured or settings.twilio_from is None:
            raise ValueError(
                "set DUNNING_TWILIO_ACCOUNT_SID, DUNNING_TWILIO_AUTH_TOKEN and DUNNING_TWILIO_FROM")
        self._from = settings.twilio_from
        self._status_callback = status_callback
        self._voices = {"cmn-CN": settings.twilio_voice_zh, "en-US": settings.twilio_voice_en}
        self._api = api or TwilioApi(
            settings.twilio_account_sid or "", settings.twilio_auth_token or "",
            api_base=settings.twilio_api_base, timeout_s=settings.provider_timeout_s)
        self._slots = asyncio.Semaphore(settings.twilio_concurrency)

    def twiml_for(self, notice: RenderedNotice) -> str:
        language = tts_language(notice.locale)
        twiml = build_twiml(notice.parts.get("text", ""), language, self._voices.get(language))
        if len(twiml) > self.max_body_chars:
            raise PermanentDeliveryError("twiml_too_long", f"{len(twiml)} characters")
        return twiml

    async def send(self, notice: RenderedNotice) -> Receipt:
        fields: dict[str, Any] = {"to": notice.destination, "from_": self._from,
                                  "twiml": self.twiml_for(notice),
                                  "time_limit": CALL_TIME_LIMIT_S}
        if self._status_callback:
            fields |= {"status_callback": self._status_callback, "status_callback_method": "POST"}

        async def create(client: Client) -> Any:
            return await client.calls.create_async(**fields)

        async with self._slots:  # waiting for a slot is not part of the provider timeout
            call = await self._api.call(create, creates=True)
        sid = getattr(call, "sid", None)
        if not isinstance(sid, str) or not sid:
            raise UnknownOutcomeError("twilio_no_sid", "accepted without a call sid")
        return Receipt(provider=self.name, provider_id=sid)

    async def find_calls(self, to: str, from_: str, since: datetime) -> list[dict[str, Any]]:
        """Calls Twilio holds from ``from_`` to ``to`` since ``since`` (reconciliation)."""
        async with self._slots:
            return await self._api.find_calls(to, from_, since)

    async def find_sent(self, notice: RenderedNotice, since: datetime) -> list[Receipt]:
        """Calls this sender placed to the notice's number since ``since``, oldest first (for
        reconciling an unknown outcome). A call carries no text to compare, so the reconciler
        takes the first one that no other notice owns."""
        found = await self.find_calls(notice.destination, self._from, since)
        found.sort(key=lambda call: call.get("date_created") or since)
        return [Receipt(self.name, str(call["sid"])) for call in found if call.get("sid")]

    async def aclose(self) -> None:
        await self._api.aclose()
