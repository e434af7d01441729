"""Contact rules in the running worker: quiet hours, caps, and the rule packs of each
jurisdiction, on a shifted clock (DUNNING_CLOCK_OFFSET_S)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, offset_to, run_cli, sample

StartWorker = Callable[..., WorkerProcess]
SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")


def local_today_at(zone: ZoneInfo, hour: int, minute: int = 0) -> datetime:
    return datetime.now(zone).replace(hour=hour, minute=minute, second=0, microsecond=0)


async def test_23_00_in_shanghai_defers_until_08_00_and_then_sends(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble,
        smtp: SmtpTestServer) -> None:
    late = local_today_at(SHANGHAI, 23)
    worker = start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(late)))
    await broker.publish_sample("escalated_m1_cn.json")
    deferred = await broker.wait_outcomes(2)
    morning = (late + timedelta(days=1)).replace(hour=8)
    assert {o["status"] for o in deferred} == {"deferred"}
    assert {datetime.fromisoformat(o["not_before"]) for o in deferred} == {morning}
    assert {o["reason"] for o in deferred} == {"quiet_hours"}
    await asyncio.sleep(0.5)
    assert twilio.messages == [] and smtp.received == []
    assert worker.terminate() == 0

    start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(morning + timedelta(seconds=5))))
    sent = await broker.wait_outcomes(4)
    assert {o["status"] for o in sent[2:]} == {"sent"}
    assert len(twilio.messages) == 1 and len(smtp.received) == 1


async def test_a_payment_cancels_notices_deferred_by_quiet_hours(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble) -> None:
    start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(local_today_at(SHANGHAI, 23))))
    await broker.publish_sample("escalated_m1_cn.json")
    await broker.wait_outcomes(2)
    await broker.publish_sample("payment_received.json")
    outcomes = await broker.wait_outcomes(6)
    escalation = [o for o in outcomes if o["event_id"] == "evt-cn-0001"]
    assert sorted((o["status"], o["reason"]) for o in escalation) == [
        ("cancelled", "payment_received"), ("cancelled", "payment_received"),
        ("deferred", "quiet_hours"), ("deferred", "quiet_hours")]
    thanks = [o for o in outcomes if o["event_id"] == "evt-cn-0003"]
    assert {o["status"] for o in thanks} == {"deferred"}  # the thank-you waits for 08:00 too
    assert twilio.messages == []


def mid_escalations(count: int, jurisdiction: str) -> list[dict[str, object]]:
    events = []
    for i in range(count):
        event = sample("escalated_early_us.json", event_id=f"evt-mid-{i}", stage="mid",
                       jurisdiction=jurisdiction, channels=["voice", "sms"])
        events.append(event)
    return events


async def test_the_eighth_call_in_seven_days_waits_for_the_first_to_leave_the_window(
        start_worker: StartWorker, broker: Broker) -> None:
    start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(local_today_at(NEW_YORK, 10))))
    for event in mid_escalations(8, "US"):
        await broker.publish(event)
    outcomes = await broker.wait_outcomes(16)
    calls = [o for o in outcomes if o["channel"] == "voice"]
    sent = sorted(datetime.fromisoformat(o["at"]) for o in calls if o["status"] == "sent")
    (waiting,) = [o for o in calls if o["status"] == "deferred"]
    assert len(sent) == 7
    assert waiting["reason"] == "frequency_cap"
    frees = datetime.fromisoformat(waiting["not_before"])
    assert timedelta(days=7) <= frees - sent[0] + timedelta(seconds=1)
    assert frees - sent[0] < timedelta(days=7, seconds=5)
    texts = [o for o in outcomes if o["channel"] == "sms"]
    assert sorted(o["status"] for o in texts) == ["deferred"] * 7 + ["sent"]  # 1 a day (policy)


async def test_massachusetts_allows_two_calls_or_texts_in_seven_days(
        start_worker: StartWorker, broker: Broker) -> None:
    start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(local_today_at(NEW_YORK, 10))))
    for event in mid_escalations(8, "US-MA"):
        await broker.publish(event)
    outcomes = await broker.wait_outcomes(16)
    sent = [o for o in outcomes if o["status"] == "sent"]
    assert len(sent) == 2
    rules = {o["reason"] for o in outcomes if o["status"] == "deferred"}
    assert rules == {"frequency_cap"}


async def test_every_decision_can_be_explained(
        start_worker: StartWorker, broker: Broker) -> None:
    worker = start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(local_today_at(SHANGHAI, 23))))
    await broker.publish_sample("escalated_m1_cn.json")
    (first, _) = await broker.wait_outcomes(2)
    result = await run_cli("explain", first["notice_id"], env=worker.env)
    assert result.returncode == 0, result.stderr
    assert "deferred" in result.stdout and "cn.quiet_hours" in result.stdout
    assert "not before" in result.stdout
    shown = await run_cli("ledger", "show", "--account", "CC-6222-0001", env=worker.env)
    assert shown.stdout.count("notice ntc_") == 2


async def test_a_notice_missing_a_required_disclosure_is_never_sent(
        start_worker: StartWorker, broker: Broker, twilio: TwilioDouble, tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    from tests.helpers.worker import ROOT

    copy = Path(str(tmp_path)) / "templates"
    shutil.copytree(ROOT / "templates", copy)
    (copy / "us_early" / "en-US" / "sms.txt.j2").write_text(
        "Card ending {{ account.card_last4 }}: {{ account.amount_due | money(account.currency) }}"
        " is past due.", encoding="utf-8")
    start_worker(DUNNING_TEMPLATES_DIR=str(copy))
    await broker.publish_sample("escalated_early_us.json", channels=["sms"])
    (outcome,) = await broker.wait_outcomes(1)
    assert (outcome["status"], outcome["reason"]) == ("failed", "missing_disclosure:opt_out")
    assert twilio.messages == []
