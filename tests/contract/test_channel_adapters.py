"""The channel adapter contract, run against every adapter, then what is particular to each.

SMTP runs against a real SMTP server (aiosmtpd), Twilio SMS against the Twilio REST double
driven by the real SDK, the outbox against a temporary directory, the memory twin in memory.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import pytest

import service.channels as channels
from service.channels import ADAPTERS, load_entry_point_adapters
from service.channels.base import (
    Address,
    Channel,
    ChannelAdapter,
    PermanentDeliveryError,
    RenderedNotice,
    TransientDeliveryError,
    UnknownOutcomeError,
    message_id_for,
)
from service.channels.email import SmtpEmailAdapter
from service.channels.memory import MemoryAdapter
from service.channels.outbox import OutboxAdapter
from service.channels.sms import TwilioSmsAdapter
from service.channels.twilio_client import TwilioApi
from service.config import Settings
from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import SPEC, TwilioDouble

A = TypeVar("A")
EMAIL_FROM = "信用卡中心 <collections@bank.example>"
DEBTOR_EMAIL = "zhang.wei@example.com"
ARCHIVE = "archive@bank.example"
PHONE = "+8613800138000"
TWILIO_FROM = "+15005550006"
SUBJECT = "您的信用卡账单已逾期"
TEXT = "张伟您好：您尾号4321的信用卡应还款¥1,830.00已逾期。"
HTML = "<p>张伟您好：应还款<b>¥1,830.00</b></p>"
OUTBOX_KINDS: dict[str, Channel] = {
    "outbox_email": "email", "outbox_sms": "sms", "outbox_letter": "letter"}
ADDRESS = Address(("朝阳区建国路88号", "3号楼1201"), "北京市", "北京", "100022", "CN")


def notice(channel: Channel, destination: str, notice_id: str = "evt-1.m1.0") -> RenderedNotice:
    parts = {"subject": SUBJECT, "text": f"{TEXT} [{notice_id}]", "html": HTML}
    return RenderedNotice(
        notice_id=notice_id, event_id="evt-1", channel=channel, template="overdue_m1",
        locale="zh-CN", destination=destination, parts=parts, recipient_name="张伟",
        address=ADDRESS if channel == "letter" else None,
    )


def smtp_settings(server: SmtpTestServer, **values: Any) -> Settings:
    base: dict[str, Any] = {"smtp_host": server.host, "smtp_port": server.port, "smtp_tls": "none",
            "email_from": EMAIL_FROM, "provider_timeout_s": 5.0}
    return Settings(**(base | values))


def twilio_settings(double: TwilioDouble, **values: Any) -> Settings:
    base: dict[str, Any] = {"twilio_account_sid": double.account_sid, "twilio_auth_token": double.auth_token,
            "twilio_from": TWILIO_FROM, "twilio_api_base": double.base_url,
            "provider_timeout_s": 5.0}
    return Settings(**(base | values))


class Closing(Protocol):
    def __call__(self, adapter: A, /) -> A: ...


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    """``adapter = closing(Adapter(...))``: closed at the end of the test."""
    opened: list[Any] = []

    def keep(adapter: A) -> A:
        opened.append(adapter)
        return adapter

    yield keep
    for adapter in opened:
        await adapter.aclose()


# -- the shared contract ---------------------------------------------------------------------
@dataclass
class Harness:
    adapter: Any
    provider: str
    channel: Channel
    destination: str
    deliveries: Callable[[], list[str]]  # one identity per delivery the provider holds

    def notice(self, notice_id: str = "evt-1.m1.0") -> RenderedNotice:
        return notice(self.channel, self.destination, notice_id)


def _harness(kind: str, smtp: SmtpTestServer, twilio: TwilioDouble, outbox: Path) -> Harness:
    if kind == "smtp":
        adapter: Any = SmtpEmailAdapter(smtp_settings(smtp))
        return Harness(adapter, "smtp", "email", DEBTOR_EMAIL,
                       lambda: [str(m.message["Message-ID"]) for m in smtp.received])
    if kind == "twilio_sms":
        return Harness(TwilioSmsAdapter(twilio_settings(twilio)), "twilio", "sms", PHONE,
                       lambda: [f"{m.to} {m.body}" for m in twilio.messages])
    if kind == "memory":
        memory = MemoryAdapter("sms")
        return Harness(memory, "memory", "sms", PHONE, lambda: [n.notice_id for n in memory.sent])
    channel = OUTBOX_KINDS[kind]
    suffix = {"email": ".eml", "sms": ".json", "letter": ".html"}[channel]
    folder = outbox / channel
    return Harness(OutboxAdapter(channel, outbox, email_from=EMAIL_FROM), "outbox", channel,
                   DEBTOR_EMAIL if channel == "email" else PHONE,
                   lambda: sorted(p.name for p in folder.glob(f"*{suffix}")))


@pytest.fixture(params=["smtp", "twilio_sms", "outbox_email", "outbox_sms", "outbox_letter",
                        "memory"])
async def harness(request: pytest.FixtureRequest, smtp_server: SmtpTestServer,
                  twilio_double: TwilioDouble, tmp_path: Path) -> AsyncIterator[Harness]:
    made = _harness(request.param, smtp_server, twilio_double, tmp_path)
    yield made
    await made.adapter.aclose()


def test_every_adapter_meets_the_channel_adapter_protocol(harness: Harness) -> None:
    assert isinstance(harness.adapter, ChannelAdapter)
    assert harness.adapter.channel == harness.channel
    assert harness.adapter.name == harness.provider


async def test_a_notice_is_delivered_once_and_the_receipt_names_the_provider(
        harness: Harness) -> None:
    receipt = await harness.adapter.send(harness.notice())
    assert receipt.provider == harness.provider and receipt.provider_id
    assert len(harness.deliveries()) == 1


async def test_a_resent_notice_is_recognisably_the_same_notice(harness: Harness) -> None:
    await harness.adapter.send(harness.notice())
    await harness.adapter.send(replace(harness.notice(), attempt=2))
    assert len(set(harness.deliveries())) == 1


async def test_two_notices_are_two_distinct_deliveries(harness: Harness) -> None:
    await harness.adapter.send(harness.notice("evt-1.m1.0"))
    await harness.adapter.send(harness.notice("evt-2.m1.0"))
    assert len(set(harness.deliveries())) == 2


async def test_closing_an_adapter_twice_is_harmless(harness: Harness) -> None:
    await harness.adapter.send(harness.notice())
    await harness.adapter.aclose()
    await harness.adapter.aclose()


# -- email over SMTP -------------------------------------------------------------------------
async def test_email_is_multipart_text_and_html_in_utf8(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server)))
    await adapter.send(notice("email", DEBTOR_EMAIL))
    mail = smtp_server.received[0].message
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = mail.iter_parts()
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert plain.get_content().startswith(TEXT) and html.get_content() == HTML


async def test_email_chinese_subject_and_sender_name_round_trip(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server)))
    await adapter.send(notice("email", DEBTOR_EMAIL))
    received = smtp_server.received[0]
    assert received.raw.split(b"\r\n\r\n")[0].isascii()  # headers travel RFC 2047-encoded
    assert received.message["Subject"] == SUBJECT
    assert received.message["From"].addresses[0].display_name == "信用卡中心"
    assert received.mail_from == "collections@bank.example"


async def test_email_message_id_is_derived_from_the_notice_id(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server)))
    receipt = await adapter.send(notice("email", DEBTOR_EMAIL, "evt-9.m1.1"))
    mail = smtp_server.received[0].message
    assert mail["Message-ID"] == message_id_for("evt-9.m1.1", "bank.example")
    assert receipt.provider_id == mail["Message-ID"]
    assert mail["X-Dunning-Notice-Id"] == "evt-9.m1.1" and mail["Date"]


@pytest.mark.parametrize("field", ["subject", "destination"])
async def test_a_line_break_in_a_header_is_refused_and_nothing_is_sent(
        field: str, smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server)))
    base = notice("email", DEBTOR_EMAIL)
    evil = (replace(base, parts={**base.parts, "subject": "逾期\r\nBcc: all@example.com"})
            if field == "subject" else replace(base, destination=f"{DEBTOR_EMAIL}\nBcc: x@y.z"))
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(evil)
    assert caught.value.reason == "header_injection"
    assert smtp_server.received == []


@pytest.mark.parametrize("archive", [(), (ARCHIVE,)], ids=["alone", "with_archive_copy"])
async def test_a_refused_debtor_address_fails_the_notice_permanently(
        archive: tuple[str, ...], smtp_server: SmtpTestServer,
        closing: Closing) -> None:
    """With an archive copy accepted, the refusal is partial and aiosmtplib raises nothing."""
    smtp_server.refuse_recipient(DEBTOR_EMAIL)
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server), archive_bcc=archive))
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(notice("email", DEBTOR_EMAIL))
    assert caught.value.reason == "smtp_550"
    assert all(DEBTOR_EMAIL not in mail.rcpt_tos for mail in smtp_server.received)


async def test_the_size_announced_on_mail_is_the_size_of_the_message_received(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    """RFC 1870: aiosmtpd offers SIZE, and the message is counted, not copied, to fill it."""
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server)))
    await adapter.send(notice("email", DEBTOR_EMAIL))
    [mail] = smtp_server.received
    assert [option.upper() for option in mail.mail_options] == [f"SIZE={len(mail.raw)}"]
    assert mail.raw.endswith(b"\r\n") and b"\n" not in mail.raw.replace(b"\r\n", b"")


async def test_a_refused_archive_copy_does_not_fail_a_delivered_notice(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    smtp_server.refuse_recipient(ARCHIVE)
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server), archive_bcc=[ARCHIVE]))
    await adapter.send(notice("email", DEBTOR_EMAIL))
    assert [mail.rcpt_tos for mail in smtp_server.received] == [(DEBTOR_EMAIL,)]


@pytest.mark.parametrize(("reply", "error", "reason"), [
    ("451 4.3.0 Try again later", TransientDeliveryError, "smtp_451"),
    ("554 5.7.1 Message rejected", PermanentDeliveryError, "smtp_554"),
])
async def test_an_smtp_reply_code_decides_between_retry_and_failure(
        reply: str, error: type[Exception], reason: str, smtp_server: SmtpTestServer,
        closing: Closing) -> None:
    smtp_server.reply_to_next(1, reply)
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, smtp_pool_size=1)))
    with pytest.raises(error) as caught:
        await adapter.send(notice("email", DEBTOR_EMAIL))
    assert getattr(caught.value, "reason", None) == reason
    await adapter.send(notice("email", DEBTOR_EMAIL))  # the connection is still usable
    assert len(smtp_server.received) == 1


async def test_a_server_outage_is_transient_and_sending_resumes_after_it(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, smtp_pool_size=1)))
    await adapter.send(notice("email", DEBTOR_EMAIL, "evt-1.m1.0"))  # a pooled connection
    smtp_server.stop()
    with pytest.raises(TransientDeliveryError):
        await adapter.send(notice("email", DEBTOR_EMAIL, "evt-2.m1.0"))
    smtp_server.start()
    await adapter.send(notice("email", DEBTOR_EMAIL, "evt-2.m1.0"))
    assert len(smtp_server.received) == 2


async def test_a_connection_the_server_dropped_is_reopened_and_the_notice_goes_out(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, smtp_pool_size=1)))
    await adapter.send(notice("email", DEBTOR_EMAIL, "evt-1.m1.0"))
    smtp_server.drop_connections()  # e.g. the server's idle timeout
    await adapter.send(notice("email", DEBTOR_EMAIL, "evt-2.m1.0"))
    first, second = smtp_server.received
    assert first.peer != second.peer


async def test_connections_stay_open_between_messages(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, smtp_pool_size=1)))
    for number in range(3):
        await adapter.send(notice("email", DEBTOR_EMAIL, f"evt-{number}.m1.0"))
    assert len({mail.peer for mail in smtp_server.received}) == 1


async def test_starttls_without_server_support_fails_instead_of_sending_plain_text(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, smtp_tls="starttls")))
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(notice("email", DEBTOR_EMAIL))
    assert caught.value.reason == "smtp_starttls_unavailable"
    assert smtp_server.received == []


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_delivers_with_a_trusted_certificate_and_refuses_an_untrusted_one(
        mode: str, tls_certificate: tuple[str, str], closing: Closing) -> None:
    with SmtpTestServer(tls=mode, cert_chain=tls_certificate) as server:
        untrusting = closing(SmtpEmailAdapter(smtp_settings(server, smtp_tls=mode)))
        with pytest.raises(PermanentDeliveryError) as caught:
            await untrusting.send(notice("email", DEBTOR_EMAIL))
        assert caught.value.reason == "smtp_tls_verify" and server.received == []
        trust = ssl.create_default_context(cafile=tls_certificate[0])
        trusting = closing(
            SmtpEmailAdapter(smtp_settings(server, smtp_tls=mode), tls_context=trust))
        await trusting.send(notice("email", DEBTOR_EMAIL))
        assert len(server.received) == 1


async def test_a_timeout_after_the_message_was_sent_is_an_unknown_outcome(
        smtp_server: SmtpTestServer, closing: Closing) -> None:
    smtp_server.stall_data(3.0)
    adapter = closing(SmtpEmailAdapter(smtp_settings(smtp_server, provider_timeout_s=0.5)))
    started = time.monotonic()
    with pytest.raises(UnknownOutcomeError):
        await adapter.send(notice("email", DEBTOR_EMAIL))
    assert time.monotonic() - started < 2.0


# -- SMS through Twilio ----------------------------------------------------------------------
async def test_a_chinese_sms_reaches_the_configured_twilio_base_intact(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    receipt = await adapter.send(notice("sms", PHONE))
    [sms] = twilio_double.messages
    assert (sms.to, sms.from_, sms.body) == (PHONE, TWILIO_FROM, f"{TEXT} [evt-1.m1.0]")
    assert receipt.provider_id == sms.sid and len(sms.sid) == 34
    path = f"/2010-04-01/Accounts/{twilio_double.account_sid}/Messages.json"
    assert twilio_double.requests == [("POST", path)]


async def test_the_status_callback_reaches_twilio_under_its_spec_name(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    url = "https://dunning.bank.example/twilio/status"
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double), status_callback=url))
    await adapter.send(notice("sms", PHONE))
    assert twilio_double.messages[0].status_callback == url


@pytest.mark.parametrize(("to", "code"), [
    ("+8613800000000", 21211), ("13800138000", 21211), ("+8613900000001", 21610),
    ("+8613900000002", 21614), ("+8613900000003", 21408),
])
async def test_a_recipient_twilio_refuses_fails_permanently_without_the_number_in_the_error(
        to: str, code: int, twilio_double: TwilioDouble, closing: Closing) -> None:
    twilio_double.invalid_numbers.add("+8613800000000")
    twilio_double.refused_numbers.update(
        {"+8613900000001": 21610, "+8613900000002": 21614, "+8613900000003": 21408})
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(notice("sms", to))
    assert caught.value.reason == f"twilio_{code}"
    assert to not in str(caught.value) and twilio_double.messages == []


async def test_a_503_is_transient_and_reaches_twilio_exactly_once(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    twilio_double.fail_next(1, 503)
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(notice("sms", PHONE))
    assert twilio_double.post_attempts == 1 and twilio_double.messages == []


async def test_a_429_is_transient_with_the_retry_after_twilio_asked_for(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    twilio_double.fail_next(1, 429, retry_after_s=30)
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(notice("sms", PHONE))
    assert (caught.value.reason, caught.value.retry_after_s) == ("twilio_20429", 30.0)


async def test_a_stalled_twilio_is_an_unknown_outcome_that_reconciliation_resolves(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    twilio_double.stall_next(1, 10.0)
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double, provider_timeout_s=0.5)))
    claimed_at = datetime.now(ZoneInfo("Asia/Shanghai")) - timedelta(seconds=1)
    started = time.monotonic()
    with pytest.raises(UnknownOutcomeError):
        await adapter.send(notice("sms", PHONE))
    assert time.monotonic() - started < 1.5
    [found] = await adapter.find_messages(PHONE, TWILIO_FROM, claimed_at)
    assert found["sid"] == twilio_double.messages[0].sid and found["body"].startswith(TEXT)


async def test_an_unreachable_twilio_is_transient(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    await twilio_double.stop()
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    with pytest.raises(TransientDeliveryError):
        await adapter.send(notice("sms", PHONE))


async def test_find_messages_returns_the_sent_message_and_only_it(
        twilio_double: TwilioDouble, closing: Closing) -> None:
    adapter = closing(TwilioSmsAdapter(twilio_settings(twilio_double)))
    since = datetime.now(ZoneInfo("Asia/Shanghai")) - timedelta(seconds=5)  # not UTC on purpose
    receipt = await adapter.send(notice("sms", PHONE))
    await adapter.send(notice("sms", "+8613700137000"))
    found = await adapter.find_messages(PHONE, TWILIO_FROM, since)
    assert [(m["sid"], m["to"], m["from"]) for m in found] == [
        (receipt.provider_id, PHONE, TWILIO_FROM)]
    assert await adapter.find_messages(PHONE, TWILIO_FROM, since + timedelta(hours=1)) == []


async def test_find_calls_reads_calls_back_from_twilio(twilio_double: TwilioDouble) -> None:
    async with _raw(twilio_double) as http:
        created = await http.post(_url(twilio_double, "Calls"), data={
            "To": PHONE, "From": TWILIO_FROM, "Twiml": "<Response><Say>您好</Say></Response>"})
        assert created.status == 201
    api = TwilioApi(twilio_double.account_sid, twilio_double.auth_token,
                    api_base=twilio_double.base_url, timeout_s=5)
    try:
        [call] = await api.find_calls(PHONE, TWILIO_FROM, datetime.now(UTC) - timedelta(minutes=1))
    finally:
        await api.aclose()
    assert call["sid"] == twilio_double.calls[0].sid and call["from"] == TWILIO_FROM


# -- the Twilio double itself ----------------------------------------------------------------
def _url(double: TwilioDouble, resource: str) -> str:
    return f"{double.base_url}/2010-04-01/Accounts/{double.account_sid}/{resource}.json"


def _raw(double: TwilioDouble, token: str | None = None) -> aiohttp.ClientSession:
    secret = f"{double.account_sid}:{token or double.auth_token}".encode()
    auth = "Basic " + base64.b64encode(secret).decode()
    return aiohttp.ClientSession(headers={"Authorization": auth})


async def test_the_double_rejects_a_form_field_the_spec_does_not_define(
        twilio_double: TwilioDouble) -> None:
    form = {"To": PHONE, "From": TWILIO_FROM, "Body": "hi", "StatusCalback": "https://x.y/z"}
    async with _raw(twilio_double) as http:
        response = await http.post(_url(twilio_double, "Messages"), data=form)
        error = await response.json()
    assert response.status == 400 and error["code"] == 20001
    assert set(error) == {"code", "message", "more_info", "status"}
    assert twilio_double.messages == []


@pytest.mark.parametrize(("form", "token", "status", "code"), [
    ({"From": TWILIO_FROM, "Body": "hi"}, None, 400, 21604),
    ({"To": PHONE, "Body": "hi"}, None, 400, 21603),
    ({"To": PHONE, "From": TWILIO_FROM, "Body": "hi"}, "wrong-token", 401, 20003),
])
async def test_the_double_refuses_missing_fields_and_bad_credentials_like_twilio(
        form: dict[str, str], token: str | None, status: int, code: int,
        twilio_double: TwilioDouble) -> None:
    async with _raw(twilio_double, token) as http:
        response = await http.post(_url(twilio_double, "Messages"), data=form)
        assert (response.status, (await response.json())["code"]) == (status, code)


async def test_the_double_shapes_its_answer_from_the_spec(twilio_double: TwilioDouble) -> None:
    async with _raw(twilio_double) as http:
        response = await http.post(_url(twilio_double, "Messages"),
                                   data={"To": PHONE, "From": TWILIO_FROM, "Body": "hi"})
        body = await response.json()
    assert response.status == 201
    assert list(body) == SPEC["schemas"]["api.v2010.account.message"]["properties"]
    assert body["sid"].startswith("SM") and int(body["sid"][2:], 16) >= 0
    assert body["status"] == "queued" and parsedate_to_datetime(body["date_created"]).tzinfo


# -- outbox ----------------------------------------------------------------------------------
def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


async def test_the_outbox_writes_email_as_the_same_mime_smtp_would_send(tmp_path: Path) -> None:
    receipt = await OutboxAdapter("email", tmp_path, email_from=EMAIL_FROM).send(
        notice("email", DEBTOR_EMAIL, "evt-5.m1.1"))
    written = (tmp_path / "email" / receipt.provider_id).read_bytes()
    mail = email.message_from_bytes(written, policy=email.policy.default)
    assert receipt.provider_id == "evt-5.m1.1.eml"
    assert mail["Message-ID"] == message_id_for("evt-5.m1.1", "bank.example")
    assert mail.get_content_type() == "multipart/alternative" and mail["Subject"] == SUBJECT


async def test_the_outbox_writes_sms_and_letters_with_their_manifests(tmp_path: Path) -> None:
    await OutboxAdapter("sms", tmp_path).send(notice("sms", PHONE))
    await OutboxAdapter("letter", tmp_path).send(notice("letter", "北京市朝阳区"))
    sms = json.loads((tmp_path / "sms" / "evt-1.m1.0.json").read_text("utf-8"))
    assert sms == {"notice_id": "evt-1.m1.0", "event_id": "evt-1", "to": PHONE,
                   "locale": "zh-CN", "template": "overdue_m1", "body": f"{TEXT} [evt-1.m1.0]"}
    assert (tmp_path / "letter" / "evt-1.m1.0.html").read_text("utf-8") == HTML
    letter = json.loads((tmp_path / "letter" / "evt-1.m1.0.json").read_text("utf-8"))
    assert letter["address"]["lines"] == list(ADDRESS.lines)
    assert _files(tmp_path, ".*") == []  # no temporary files left behind


async def test_a_notice_id_cannot_write_outside_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    receipt = await OutboxAdapter("sms", outbox).send(notice("sms", PHONE, "../../escape"))
    assert [p.parent for p in _files(tmp_path, "*.json")] == [outbox / "sms"]
    assert "/" not in receipt.provider_id


# -- memory twin -----------------------------------------------------------------------------
async def test_the_memory_twin_fails_the_next_sends_as_told() -> None:
    twin = MemoryAdapter("sms")
    twin.fail_next(2, PermanentDeliveryError, "twilio_21211")
    for _ in range(2):
        with pytest.raises(PermanentDeliveryError, match="twilio_21211"):
            await twin.send(notice("sms", PHONE))
    receipt = await twin.send(notice("sms", PHONE))
    assert (receipt.provider_id, twin.attempts, len(twin.sent)) == ("mem-1", 3, 1)


# -- registry --------------------------------------------------------------------------------
def test_the_registry_names_every_built_in_adapter() -> None:
    from service.channels.letter import SpoolLetterAdapter
    from service.channels.printmail import PrintMailLetterAdapter
    from service.channels.voice import TwilioVoiceAdapter

    assert {"smtp", "twilio_sms", "twilio_voice", "spool_letter", "printmail_letter", "outbox",
            "memory"} <= set(ADAPTERS)
    assert ADAPTERS["smtp"] is SmtpEmailAdapter and ADAPTERS["twilio_sms"] is TwilioSmsAdapter
    assert ADAPTERS["twilio_voice"] is TwilioVoiceAdapter
    assert ADAPTERS["spool_letter"] is SpoolLetterAdapter
    assert ADAPTERS["printmail_letter"] is PrintMailLetterAdapter


def _install_entry_point(root: Path, key: str, module: str) -> None:
    (root / f"{module}.py").write_text(
        "class PrintHouse:\n    channel = 'letter'\n    name = 'printhouse'\n"
        "    async def send(self, notice): ...\n    async def aclose(self): ...\n")
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[dunning.channels]\n{key} = {module}:PrintHouse\n")


@pytest.mark.parametrize("key", ["printhouse", "smtp"])
def test_a_bank_adds_an_adapter_by_entry_point_but_cannot_replace_one(
        key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"bank_adapter_{key}"
    _install_entry_point(tmp_path, key, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(channels, "ADAPTERS", dict(ADAPTERS))
    try:
        if key == "smtp":
            with pytest.raises(ValueError, match="replace"):
                load_entry_point_adapters()
        else:
            found = load_entry_point_adapters()
            assert found == {key: sys.modules[module].PrintHouse} == {
                key: channels.ADAPTERS[key]}
    finally:
        sys.modules.pop(module, None)
