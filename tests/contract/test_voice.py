"""Voice calls: the real Twilio SDK against the Twilio REST double, TwiML read back as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.channels.base import (
    PermanentDeliveryError,
    RenderedNotice,
    TransientDeliveryError,
    UnknownOutcomeError,
)
from service.channels.voice import TwilioVoiceAdapter, build_twiml, split_script, tts_language
from service.config import Settings
from tests.contract import test_channel_adapters as shared
from tests.contract.test_channel_adapters import Harness
from tests.helpers.notices import rendered_notice, sample_event, us_event
from tests.helpers.twilio_double import TwilioDouble

TWILIO_FROM = "+15005550006"
CALLBACK = "https://dunning.example.com/twilio/status"
CN_PHONE = "+8613912345678"


def voice_settings(double: TwilioDouble, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "twilio_account_sid": double.account_sid, "twilio_auth_token": double.auth_token,
        "twilio_from": TWILIO_FROM, "twilio_api_base": double.base_url, "provider_timeout_s": 5.0}
    return Settings(**(base | values))


@pytest.fixture
async def voice(twilio_double: TwilioDouble) -> AsyncIterator[TwilioVoiceAdapter]:
    adapter = TwilioVoiceAdapter(voice_settings(twilio_double), status_callback=CALLBACK)
    yield adapter
    await adapter.aclose()


def says(twiml: str) -> list[tuple[str, dict[str, str], str]]:
    """(tag, attributes, text) of every verb; parsing fails on anything but well-formed XML."""
    root = ET.fromstring(twiml.encode("utf-8"))  # noqa: S314 - TwiML we made, sent to the double
    assert root.tag == "Response"
    return [(verb.tag, dict(verb.attrib), verb.text or "") for verb in root]


def cn_m3_call() -> RenderedNotice:
    return rendered_notice(sample_event("escalated_m3_letter_cn.json"), "cn_m3", "voice")


# -- the shared channel adapter contract --------------------------------------------------------
@pytest.fixture
async def harness(twilio_double: TwilioDouble) -> AsyncIterator[Harness]:
    adapter = TwilioVoiceAdapter(voice_settings(twilio_double))
    yield Harness(adapter, "twilio", "voice", CN_PHONE,
                  lambda: [f"{call.to} {call.twiml}" for call in twilio_double.calls])
    await adapter.aclose()


test_every_adapter_meets_the_channel_adapter_protocol = (
    shared.test_every_adapter_meets_the_channel_adapter_protocol)
test_a_notice_is_delivered_once_and_the_receipt_names_the_provider = (
    shared.test_a_notice_is_delivered_once_and_the_receipt_names_the_provider)
test_a_resent_notice_is_recognisably_the_same_notice = (
    shared.test_a_resent_notice_is_recognisably_the_same_notice)
test_two_notices_are_two_distinct_deliveries = shared.test_two_notices_are_two_distinct_deliveries
test_closing_an_adapter_twice_is_harmless = shared.test_closing_an_adapter_twice_is_harmless


# -- what the call says --------------------------------------------------------------------------
async def test_a_chinese_call_reads_the_message_twice_with_a_pause_then_the_closing(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    receipt = await voice.send(cn_m3_call())
    (call,) = twilio_double.calls
    assert (receipt.provider, receipt.provider_id) == ("twilio", call.sid)
    assert call.sid.startswith("CA") and (call.to, call.from_) == (CN_PHONE, TWILIO_FROM)
    assert call.twiml is not None and call.url is None
    verbs = says(call.twiml)
    assert [tag for tag, _, _ in verbs] == ["Say", "Pause", "Say", "Say"]
    first, pause, again, closing = verbs
    assert first == again and first[1] == {"language": "cmn-CN", "voice": "Polly.Zhiyu"}
    assert pause[1] == {"length": "2"}
    assert "¥9,120.55" in first[2] and "8 8 7 6" in first[2] and "示例银行信用卡中心" in first[2]
    assert "400-820-0000" in closing[2] and closing[1]["language"] == "cmn-CN"


async def test_the_status_callback_and_a_time_limit_go_with_the_call(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    await voice.send(cn_m3_call())
    form = twilio_double.calls[0].form
    assert (form["StatusCallback"], form["StatusCallbackMethod"]) == (CALLBACK, "POST")
    assert int(form["TimeLimit"]) > 0


async def test_a_us_call_is_an_english_limited_content_message(
        twilio_double: TwilioDouble) -> None:
    adapter = TwilioVoiceAdapter(voice_settings(twilio_double, twilio_voice_en="Polly.Matthew"))
    try:
        await adapter.send(rendered_notice(us_event("late"), "us_late", "voice"))
    finally:
        await adapter.aclose()
    verbs = says(twilio_double.calls[0].twiml or "")
    assert {attrs["language"] for tag, attrs, _ in verbs if tag == "Say"} == {"en-US"}
    assert {attrs["voice"] for tag, attrs, _ in verbs if tag == "Say"} == {"Polly.Matthew"}
    spoken = " ".join(text for _, _, text in verbs)
    assert "Maria Gonzalez" in spoken and "1-800-555-0123" in spoken
    for forbidden in ("Example Bank", "$", "0042", "debt", "past due"):  # Reg F 1006.2(j)
        assert forbidden not in spoken, forbidden


async def test_markup_in_a_script_is_read_as_text_not_obeyed(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    hostile = 'Ann</Say><Dial>+19005550000</Dial><Say> & "Bob" <Hangup/>\x07'
    notice = replace(cn_m3_call(), parts={"text": f"Hello {hostile}.\n\nCall us."})
    await voice.send(notice)
    verbs = says(twilio_double.calls[0].twiml or "")
    assert [tag for tag, _, _ in verbs] == ["Say", "Pause", "Say", "Say"]
    assert verbs[0][2] == f"Hello {hostile[:-1]}."  # the bell character XML cannot carry is gone


async def test_a_script_longer_than_twilio_takes_is_refused_before_calling(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    notice = replace(cn_m3_call(), parts={"text": "请还款。" * 600})
    with pytest.raises(PermanentDeliveryError) as caught:
        await voice.send(notice)
    assert caught.value.reason == "twiml_too_long" and twilio_double.post_attempts == 0


async def test_an_empty_script_is_refused(voice: TwilioVoiceAdapter) -> None:
    with pytest.raises(PermanentDeliveryError, match="empty_script"):
        await voice.send(replace(cn_m3_call(), parts={"text": " \n\n "}))


def test_scripts_split_into_message_and_closing_and_join_lines_by_script() -> None:
    assert split_script("您好。\n请还款。\n\n热线4008200000。") == ("您好。请还款。", "热线4008200000。")
    assert split_script("Hello.\nPlease pay.\n\nCall us.") == ("Hello. Please pay.", "Call us.")
    assert split_script("Only a message.") == ("Only a message.", "")
    assert [tts_language(x) for x in ("zh-CN", "zh", "en-US", "en-GB", "zh-TW", "es-US")] == [
        "cmn-CN", "cmn-CN", "en-US", "en-GB", "cmn-TW", "es-US"]
    assert "voice=" not in build_twiml("Hola.", "es-US")


# -- errors and reconciliation, the same discipline as SMS --------------------------------------
async def test_a_number_twilio_refuses_fails_the_call_permanently(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    twilio_double.invalid_numbers.add(CN_PHONE)
    with pytest.raises(PermanentDeliveryError) as caught:
        await voice.send(cn_m3_call())
    assert caught.value.reason == "twilio_21211" and CN_PHONE not in str(caught.value)


async def test_a_503_is_transient_and_reaches_twilio_once(
        voice: TwilioVoiceAdapter, twilio_double: TwilioDouble) -> None:
    twilio_double.fail_next(1, 503)
    with pytest.raises(TransientDeliveryError):
        await voice.send(cn_m3_call())
    assert twilio_double.post_attempts == 1 and twilio_double.calls == []


async def test_a_stalled_call_is_an_unknown_outcome_that_find_calls_resolves(
        twilio_double: TwilioDouble) -> None:
    twilio_double.stall_next(1, 5.0)
    adapter = TwilioVoiceAdapter(voice_settings(twilio_double, provider_timeout_s=0.5))
    claimed_at = datetime.now(UTC) - timedelta(seconds=1)
    try:
        with pytest.raises(UnknownOutcomeError):
            await adapter.send(cn_m3_call())
        (found,) = await adapter.find_calls(CN_PHONE, TWILIO_FROM, claimed_at)
        receipts = await adapter.find_sent(cn_m3_call(), claimed_at)
    finally:
        await adapter.aclose()
    assert found["sid"] == twilio_double.calls[0].sid and found["to"] == CN_PHONE
    assert [(r.provider, r.provider_id) for r in receipts] == [("twilio", found["sid"])]
