"""The worker against real providers on loopback: aiosmtpd and the Twilio double."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from email.message import EmailMessage

from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, by_channel, sample
from tests.integration.conftest import TWILIO_FROM

StartWorker = Callable[..., WorkerProcess]


def bodies(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


async def test_m1_cn_sends_one_chinese_sms_and_one_multipart_email(
        start_worker: StartWorker, broker: Broker, smtp: SmtpTestServer,
        twilio: TwilioDouble) -> None:
    start_worker()
    await broker.publish_sample("escalated_m1_cn.json")
    outcomes = by_channel(await broker.wait_outcomes(2))
    assert {c: o["status"] for c, o in outcomes.items()} == {"sms": "sent", "email": "sent"}
    assert len(twilio.messages) == 1
    sms = twilio.messages[0]
    assert (sms.to, sms.from_) == ("+8613800138000", TWILIO_FROM)
    assert sms.body is not None
    assert "1,830.00" in sms.body and "4321" in sms.body
    assert any("\u4e00" <= ch <= "\u9fff" for ch in sms.body)
    assert outcomes["sms"]["provider_id"] == sms.sid and sms.sid.startswith("SM")
    assert outcomes["sms"]["locale"] == "zh-CN"
    assert len(smtp.received) == 1
    mail = smtp.received[0]
    assert mail.rcpt_tos == ("zhang.wei@example.com",)
    assert mail.message.get_content_type() == "multipart/alternative"
    text, html = bodies(mail.message)
    assert "1,830.00" in text and "4321" in text and "1,830.00" in html
    assert outcomes["email"]["notice_id"] in mail.message["Message-ID"]


async def test_early_us_is_english_with_opt_out_lines(
        start_worker: StartWorker, broker: Broker, smtp: SmtpTestServer,
        twilio: TwilioDouble) -> None:
    start_worker()
    await broker.publish_sample("escalated_early_us.json")
    outcomes = by_channel(await broker.wait_outcomes(2))
    assert {o["status"] for o in outcomes.values()} == {"sent"}
    body = twilio.messages[0].body or ""
    assert "$210.00" in body and "0042" in body and "STOP" in body
    text, _ = bodies(smtp.received[0].message)
    assert "$210.00" in text and "unsubscribe" in text.lower()
    assert outcomes["email"]["locale"] == "en-US"


async def test_publishing_an_event_twice_sends_nothing_more(
        start_worker: StartWorker, broker: Broker, smtp: SmtpTestServer,
        twilio: TwilioDouble) -> None:
    start_worker()
    await broker.publish_sample("escalated_early_us.json")
    await broker.wait_outcomes(2)
    await broker.publish_sample("escalated_early_us.json")
    await broker.publish_sample("escalated_m1_cn.json")  # a marker: once it is through, so is the repeat
    await broker.wait_outcomes(4)
    await asyncio.sleep(0.5)
    assert len(broker.outcomes) == 4
    assert len(twilio.messages) == 2 and len(smtp.received) == 2


async def test_every_invalid_sample_is_dead_lettered_and_the_worker_goes_on(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    start_worker()
    from tests.helpers.worker import SAMPLES

    expected = {"float_money.json": ("invalid_event", "account.amount_due"),
                "naive_time.json": ("invalid_event", "occurred_at"),
                "truncated.json": ("invalid_json", "JSON"),
                "unknown_stage.json": ("unknown_stage", "stage")}
    for name in expected:
        await broker.publish_raw((SAMPLES / "invalid" / name).read_bytes(), "delinquency.escalated")
    await broker.publish_raw(b'{"event_id": "x", "type": "account.closed"}', "account.closed")
    await broker.publish_raw(b"x" * (300 * 1024), "delinquency.escalated")
    await broker.publish_sample("escalated_early_us.json")
    assert {o["status"] for o in await broker.wait_outcomes(2)} == {"sent"}
    dead = await broker.dead_letters(6)
    found = {}
    for message in dead:
        headers = message.headers or {}
        body = message.body
        found[body[:40]] = (headers["x-dunning-error"], headers["x-dunning-error-detail"])
    codes = sorted(code for code, _ in found.values())
    assert codes == sorted(["invalid_event", "invalid_event", "invalid_json", "unknown_stage",
                            "unknown_type", "too_large"])
    for name, (code, field) in expected.items():
        body = (SAMPLES / "invalid" / name).read_bytes()
        got_code, detail = found[body[:40]]
        assert got_code == code and field in str(detail), (name, got_code, detail)
    assert await broker.dead_letters(1, timeout_s=0.5) == []  # nothing loops back


async def test_a_hold_suppresses_later_escalations(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble,
        smtp: SmtpTestServer) -> None:
    start_worker()
    await broker.publish_sample("hold_dispute.json")
    await broker.publish_sample("escalated_early_us.json")
    outcomes = await broker.wait_outcomes(2)
    assert {(o["status"], o["reason"]) for o in outcomes} == {("suppressed", "hold:dispute")}
    assert twilio.messages == [] and smtp.received == []


async def test_an_opted_out_phone_gets_no_sms_but_email_still_goes(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble,
        smtp: SmtpTestServer) -> None:
    start_worker()
    await broker.publish_sample("opted_out.json")
    await broker.publish_sample("escalated_early_us.json")
    outcomes = by_channel(await broker.wait_outcomes(2))
    assert (outcomes["sms"]["status"], outcomes["sms"]["reason"]) == ("suppressed", "opted_out")
    assert outcomes["email"]["status"] == "sent"
    assert twilio.messages == [] and len(smtp.received) == 1


async def test_a_payment_cancels_waiting_notices_of_its_account(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble,
        smtp: SmtpTestServer) -> None:
    start_worker(DUNNING_RETRY_BASE_S="30")
    twilio.fail_next(1, 503)  # the SMS waits for a retry …
    smtp.reply_to_next(1)  # … and so does the email
    await broker.publish_sample("escalated_m1_cn.json")
    for _ in range(200):  # until both first attempts were answered with an error
        if twilio.post_attempts and smtp.data_attempts:
            break
        await asyncio.sleep(0.05)
    await broker.publish_sample("payment_received.json")
    outcomes = await broker.wait_outcomes(4)
    escalation = [o for o in outcomes if o["event_id"] == "evt-cn-0001"]
    assert {(o["status"], o["reason"]) for o in escalation} == {("cancelled", "payment_received")}
    thanks = by_channel(o for o in outcomes if o["event_id"] == "evt-cn-0003")
    assert {o["status"] for o in thanks.values()} == {"sent"}
    assert [m.body for m in twilio.messages if m.body and "1,830.00" in m.body]


async def test_a_missing_or_invalid_destination_suppresses_only_that_step(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    start_worker()
    event = sample("escalated_early_us.json", event_id="evt-nodest")
    event["debtor"] = {**event["debtor"], "email": None, "phone": "+1202555"}
    await broker.publish(event)
    outcomes = by_channel(await broker.wait_outcomes(2))
    assert outcomes["email"]["reason"] == "no_destination"
    assert outcomes["sms"]["reason"] == "invalid_destination"
    assert {o["status"] for o in outcomes.values()} == {"suppressed"}


async def test_a_refused_number_fails_without_retry(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    start_worker()
    twilio.invalid_numbers.add("+12025550143")
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert (outcome["status"], outcome["reason"]) == ("failed", "twilio_21211")
    assert twilio.post_attempts == 1


async def test_transient_errors_are_retried_until_sent(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    start_worker()
    twilio.fail_next(2, 503)
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert outcome["status"] == "sent" and outcome["attempt"] == 3
    assert twilio.post_attempts == 3 and len(twilio.messages) == 1


async def test_sigterm_exits_zero_and_outcomes_are_json_on_the_right_keys(
        start_worker: StartWorker, broker: Broker) -> None:
    worker = start_worker()
    await broker.publish_sample("escalated_m1_cn.json")
    await broker.wait_outcomes(2)
    assert worker.terminate() == 0
    assert sorted(broker.outcome_keys) == ["sent.email", "sent.sms"]
    assert all(json.dumps(o) and o["schema"] == "dunning.outcome/v1" for o in broker.outcomes)
