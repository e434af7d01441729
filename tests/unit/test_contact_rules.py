"""Quiet hours, caps, cooldowns and disclosures: examples, then properties over random inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from service.rulepacks import ContentRequired, Cooldown, Disclosure, FrequencyCap, QuietHours
from service.rules import (
    Contact,
    Subject,
    candidate_zones,
    check_timing,
    missing_disclosures,
    next_allowed,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
CN_QUIET = QuietHours(id="cn.quiet", type="quiet_hours", allowed="08:00-22:00",
                      channels=["sms", "email", "voice"])
US_QUIET = QuietHours(id="us.quiet", type="quiet_hours", allowed="08:00-21:00",
                      channels=["sms", "email", "voice"])
CALLS_7_IN_7D = FrequencyCap(id="us.calls", type="frequency_cap", channels=["voice"],
                             scope="account", window="7d", max=7)


def subject(channel: str = "voice", zones: tuple[ZoneInfo, ...] = (NEW_YORK,)) -> Subject:
    return Subject(channel, "CC-1", "D-1", "+12025550143", zones)


def call(at: datetime, conversation: bool = False) -> Contact:
    return Contact(at, "voice", "CC-1", "D-1", "+12025550143", conversation)


def test_23_00_in_shanghai_defers_to_08_00_the_next_morning() -> None:
    now = datetime(2026, 11, 28, 23, 0, tzinfo=SHANGHAI)
    decision = check_timing([CN_QUIET], subject("sms", (SHANGHAI,)), [], now)
    assert (decision.verdict, decision.reason, decision.rule) == ("defer", "quiet_hours",
                                                                  "cn.quiet")
    assert decision.not_before == datetime(2026, 11, 29, 8, 0, tzinfo=SHANGHAI)


def test_inside_the_window_sends() -> None:
    now = datetime(2026, 11, 28, 10, 0, tzinfo=SHANGHAI)
    assert check_timing([CN_QUIET], subject("sms", (SHANGHAI,)), [], now).sends


def test_every_candidate_zone_must_allow_the_time() -> None:
    now = datetime(2026, 11, 28, 21, 30, tzinfo=SHANGHAI)  # 08:30 in New York
    decision = check_timing([US_QUIET], subject("sms", (SHANGHAI, NEW_YORK)), [], now)
    assert decision.verdict == "defer"
    # both allow it from 08:00 in Shanghai (19:00 in New York the day before)
    assert decision.not_before == datetime(2026, 11, 29, 8, 0, tzinfo=SHANGHAI)


def test_daylight_saving_start_is_handled() -> None:
    # 2026-03-08 in New York: 02:00 jumps to 03:00; 08:00 is 12:00 UTC, not 13:00
    now = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)
    opens = next_allowed([US_QUIET], (NEW_YORK,), now)
    assert opens == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)


def test_the_eighth_call_in_seven_days_waits_for_the_first_to_leave_the_window() -> None:
    start = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York
    history = [call(start + timedelta(hours=2 * i)) for i in range(7)]
    now = start + timedelta(days=1)
    decision = check_timing([US_QUIET, CALLS_7_IN_7D], subject(), history, now)
    assert (decision.verdict, decision.rule) == ("defer", "us.calls")
    assert decision.not_before == start + timedelta(days=7)


def test_a_cap_deferral_also_respects_quiet_hours() -> None:
    first = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # 22:00 in New York (another pack's window)
    history = [call(first + timedelta(minutes=i)) for i in range(7)]
    now = first + timedelta(days=1)
    decision = check_timing([US_QUIET, CALLS_7_IN_7D], subject(), history, now)
    assert decision.not_before is not None
    assert decision.not_before.astimezone(NEW_YORK).hour == 8


def test_a_calendar_day_cap_frees_at_local_midnight() -> None:
    cap = FrequencyCap(id="cn.calls", type="frequency_cap", channels=["voice"],
                       scope="destination", window="calendar_day", max=6)
    now = datetime(2026, 11, 28, 15, 0, tzinfo=SHANGHAI)
    history = [call(now - timedelta(hours=1, minutes=i)) for i in range(6)]
    decision = check_timing([cap], subject("voice", (SHANGHAI,)), history, now)
    assert decision.not_before == datetime(2026, 11, 29, 0, 0, tzinfo=SHANGHAI)


def test_a_cap_may_suppress_instead_of_defer() -> None:
    cap = CALLS_7_IN_7D.model_copy(update={"on_exceed": "suppress"})
    now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    history = [call(now - timedelta(hours=i + 1)) for i in range(7)]
    decision = check_timing([cap], subject(), history, now)
    assert (decision.verdict, decision.rule) == ("suppress", "us.calls")


def test_no_call_for_seven_days_after_a_conversation() -> None:
    cooldown = Cooldown(id="us.after_talk", type="cooldown", channels=["voice"], days=7)
    talked = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    now = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    decision = check_timing([cooldown], subject(), [call(talked, conversation=True)], now)
    assert (decision.verdict, decision.not_before) == ("defer", talked + timedelta(days=7))
    assert check_timing([cooldown], subject(), [call(talked)], now).sends


def test_other_accounts_do_not_count_against_an_account_cap() -> None:
    now = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    history = [Contact(now - timedelta(hours=i + 1), "voice", "CC-2", "D-1", "+1", False)
               for i in range(7)]
    assert check_timing([CALLS_7_IN_7D], subject(), history, now).sends


def test_zones_come_from_the_debtor_else_the_phone_else_the_fallback() -> None:
    assert candidate_zones({"timezone": "Asia/Shanghai"}, None) == [SHANGHAI]
    assert candidate_zones({"phone": "+12025550143", "address": {"country": "US"}},
                           None) == [NEW_YORK]
    mixed = candidate_zones({"phone": "+8613800138000", "address": {"country": "US"}}, None)
    assert SHANGHAI in mixed and NEW_YORK in mixed
    assert candidate_zones({"timezone": "Mars/Base"}, "Asia/Shanghai") == [SHANGHAI]


def test_missing_disclosures_are_named_with_their_rule() -> None:
    rule = ContentRequired(id="us.opt_out", type="content_required", channels=["sms"],
                           disclosures=["opt_out", "bank_contact"])
    known = {"opt_out": Disclosure(pattern="(?i)reply STOP"),
             "bank_contact": Disclosure(sender_fields=["hotline"])}
    text = "Pay now. Call 1-800-555-0123."
    values = {"hotline": "1-800-555-0123"}
    assert missing_disclosures([rule], known, text, values) == [("us.opt_out", "opt_out")]
    assert missing_disclosures([rule], known, text + " Reply STOP to opt out.", values) == []


# ---- properties ----------------------------------------------------------------------------

ZONES = ["Asia/Shanghai", "America/New_York", "America/Los_Angeles", "Europe/London",
         "Australia/Sydney", "Pacific/Honolulu", "Asia/Kolkata", "America/Sao_Paulo"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[object], Subject, list[Contact], datetime]:
    opens = draw(st.integers(0, 12))
    closes = draw(st.integers(opens + 6, 24))
    quiet = QuietHours(id="q", type="quiet_hours", channels=["voice"],
                       allowed=f"{opens:02d}:00-{closes:02d}:00")
    window = draw(st.sampled_from(["7d", "24h", "calendar_day"]))
    cap = FrequencyCap(id="c", type="frequency_cap", channels=["voice"], scope="account",
                       window=window, max=draw(st.integers(1, 7)))
    zones = tuple(ZoneInfo(z) for z in draw(st.lists(st.sampled_from(ZONES), min_size=1,
                                                      max_size=2, unique=True)))
    now = BASE + timedelta(minutes=draw(st.integers(0, 365 * 24 * 60)))
    ages = draw(st.lists(st.integers(1, 10 * 24 * 60), max_size=12))
    history = [call(now - timedelta(minutes=age)) for age in ages]
    return [quiet, cap], subject("voice", zones), history, now


def allowed(rules: list[object], subj: Subject, history: list[Contact], at: datetime) -> bool:
    quiet, cap = rules
    assert isinstance(quiet, QuietHours) and isinstance(cap, FrequencyCap)
    opens, closes = quiet.bounds
    for zone in subj.zones:
        local = at.astimezone(zone).time()
        if local < opens or (closes is not None and local >= closes):
            return False
    if cap.span is not None:
        start = at - cap.span
    else:
        day = at.astimezone(subj.zones[0]).date()
        start = datetime.combine(day, datetime.min.time(), tzinfo=subj.zones[0])
    return sum(1 for c in history if start < c.at <= at) < cap.max


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_nothing_is_sent_outside_its_window_or_over_a_cap(
        scenario: tuple[list[object], Subject, list[Contact], datetime]) -> None:
    rules, subj, history, now = scenario
    decision = check_timing(rules, subj, history, now)
    if decision.sends:
        assert allowed(rules, subj, history, now)
    elif decision.verdict == "defer":
        assert decision.not_before is not None and decision.not_before > now
        assert allowed(rules, subj, history, decision.not_before)
        assert not allowed(rules, subj, history, now)
    else:
        assert decision.reason is not None and decision.reason.endswith("never_allowed")
