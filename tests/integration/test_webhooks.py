"""Twilio webhooks: signatures checked against DUNNING_PUBLIC_URL, STOP words opt out."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Callable

from twilio.request_validator import RequestValidator

from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, by_channel, run_cli

StartWorker = Callable[..., WorkerProcess]


def post(worker: WorkerProcess, path: str, form: dict[str, str],
         signature: str | None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(worker.url + path, data=data, method="POST")  # noqa: S310
    if signature is not None:
        request.add_header("X-Twilio-Signature", signature)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def signed(worker: WorkerProcess, twilio: TwilioDouble, path: str,
           form: dict[str, str]) -> tuple[int, str]:
    signature = RequestValidator(twilio.auth_token).compute_signature(worker.url + path, form)
    return post(worker, path, form, signature)


def inbound(text: str, phone: str) -> dict[str, str]:
    return {"MessageSid": "SM" + "1" * 32, "AccountSid": "AC" + "d0" * 16, "From": phone,
            "To": "+15005550006", "Body": text}


async def test_a_forged_stop_is_refused_and_changes_nothing(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    worker = start_worker(DUNNING_PUBLIC_URL="auto")
    form = inbound("STOP", "+12025550143")
    assert post(worker, "/twilio/inbound", form, "forged")[0] == 403
    assert post(worker, "/twilio/inbound", form, None)[0] == 403
    other_url = RequestValidator(twilio.auth_token).compute_signature(
        "http://attacker.example/twilio/inbound", form)
    assert post(worker, "/twilio/inbound", form, other_url)[0] == 403
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert outcome["status"] == "sent" and len(twilio.messages) == 1


async def test_a_signed_stop_opts_the_phone_out_of_sms(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    worker = start_worker(DUNNING_PUBLIC_URL="auto")
    status, body = signed(worker, twilio, "/twilio/inbound", inbound(" stop ", "+12025550143"))
    assert status == 200 and "<Message>" in body and "unsubscribed" in body
    await broker.publish_sample("escalated_early_us.json")
    outcomes = by_channel(await broker.wait_outcomes(2))
    assert (outcomes["sms"]["status"], outcomes["sms"]["reason"]) == ("suppressed", "opted_out")
    assert outcomes["email"]["status"] == "sent"
    assert twilio.messages == []


async def test_tuiding_in_chinese_opts_out_and_is_answered_in_chinese(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    worker = start_worker(DUNNING_PUBLIC_URL="auto")
    status, body = signed(worker, twilio, "/twilio/inbound", inbound("退订", "+8613800138000"))
    assert status == 200 and "退订" in body
    await broker.publish_sample("escalated_m1_cn.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert (outcome["status"], outcome["reason"]) == ("suppressed", "opted_out")


async def test_other_words_do_not_opt_out(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    worker = start_worker(DUNNING_PUBLIC_URL="auto")
    status, body = signed(worker, twilio, "/twilio/inbound", inbound("stop calling me at work "
                                                                     "please", "+12025550143"))
    assert status == 200 and "<Message>" not in body
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert outcome["status"] == "sent"


async def test_a_status_callback_is_recorded_on_the_notice(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    worker = start_worker(DUNNING_PUBLIC_URL="auto")
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert twilio.messages[0].status_callback == worker.url + "/twilio/status"
    form = {"MessageSid": outcome["provider_id"], "MessageStatus": "delivered",
            "AccountSid": twilio.account_sid}
    assert post(worker, "/twilio/status", form, "forged")[0] == 403
    assert signed(worker, twilio, "/twilio/status", form)[0] == 200
    result = await run_cli("explain", outcome["notice_id"], env=worker.env)
    assert "delivery delivered" in result.stdout and "provider_callback" in result.stdout
