"""Destinations, the clock-free rules, and planning notices from the policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.events import BadEvent, Escalated, PaymentReceived, parse_event
from service.policy import PolicyError, load_policy, notice_id_for, plan_escalation, plan_payment
from service.rules import (
    Destination,
    destination_for,
    email_destination,
    evaluate,
    phone_destination,
)

ROOT = Path(__file__).parent.parent.parent
SAMPLES = ROOT / "tests" / "samples"
POLICY = load_policy(ROOT / "templates" / "policy.yaml")


def escalation(name: str, **changes: object) -> Escalated:
    data = json.loads((SAMPLES / name).read_text())
    data.update(changes)
    event = parse_event(json.dumps(data).encode())
    assert isinstance(event, Escalated)
    return event


def test_phone_numbers_must_be_valid_e164() -> None:
    assert phone_destination("+8613800138000").value == "+8613800138000"
    assert phone_destination(None).problem == "no_destination"
    assert phone_destination("13800138000").problem == "invalid_destination"
    assert phone_destination("+86 138").problem == "invalid_destination"
    assert phone_destination("+1202555").problem == "invalid_destination"


def test_emails_and_letters_need_a_usable_destination() -> None:
    assert email_destination("A@Example.COM").value == "a@example.com"
    assert email_destination("no-at-sign").problem == "invalid_destination"
    assert destination_for("letter", {"address": None}).problem == "no_destination"
    letter = destination_for("letter", {"address": {"lines": ["1 Main St"], "city": "X"}})
    assert letter.value == "1 Main St, X"


def test_a_hold_beats_everything() -> None:
    decision = evaluate(hold_reason="dispute", destination=Destination(None, "no_destination"),
                        opted_out=True)
    assert (decision.verdict, decision.reason, decision.rule) == ("suppress", "hold:dispute", "hold")


def test_opt_out_suppresses_only_a_usable_destination() -> None:
    assert evaluate(hold_reason=None, destination=Destination("+1"), opted_out=True).reason == \
        "opted_out"
    assert evaluate(hold_reason=None, destination=Destination("+1"), opted_out=False).sends


def test_shipped_policy_has_both_ladders_as_the_contract_lists() -> None:
    expected = {
        "pre_due": ["sms"], "m1": ["sms", "email"], "m2": ["sms", "email", "voice"],
        "m3": ["letter", "voice", "sms"], "legal": ["letter", "email"],
        "courtesy": ["email", "sms"], "early": ["email", "sms"],
        "mid": ["email", "sms", "voice", "letter"], "late": ["letter", "email", "voice"],
        "recovery": ["letter", "email"],
    }
    assert {name: [s.channel for s in stage.steps] for name, stage in POLICY.stages.items()} == \
        expected
    assert {s.channel for s in POLICY.on_payment.steps} == {"sms", "email"}


def test_plan_gives_one_notice_per_step_with_stable_ids() -> None:
    event = escalation("escalated_m1_cn.json")
    first = plan_escalation(POLICY, event)
    assert [s.channel for s in first] == ["sms", "email"]
    assert first == plan_escalation(POLICY, event)
    assert len({s.notice_id for s in first}) == 2
    other = escalation("escalated_m1_cn.json", event_id="evt-other")
    assert not {s.notice_id for s in first} & {s.notice_id for s in plan_escalation(POLICY, other)}


def test_channels_restrict_the_steps() -> None:
    steps = plan_escalation(POLICY, escalation("escalated_m3_letter_cn.json"))
    assert [s.channel for s in steps] == ["letter", "voice"]


def test_unknown_stage_is_a_dead_letter_naming_the_stage() -> None:
    with pytest.raises(BadEvent) as caught:
        plan_escalation(POLICY, escalation("escalated_m1_cn.json", stage="m9"))
    assert caught.value.code == "unknown_stage" and "'m9'" in caught.value.detail


def test_only_a_curing_payment_plans_confirmations() -> None:
    payment = parse_event((SAMPLES / "payment_received.json").read_bytes())
    assert isinstance(payment, PaymentReceived)
    assert [s.channel for s in plan_payment(POLICY, payment)] == ["sms", "email"]
    partial = payment.model_copy(update={"cures": False})
    assert plan_payment(POLICY, partial) == []


def test_notice_ids_do_not_collide_across_events() -> None:
    assert notice_id_for("a", "b/c") != notice_id_for("a/b", "c")


def test_a_broken_policy_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("stages:\n  m1:\n    steps:\n      - {channel: fax, template: x}\n")
    with pytest.raises(PolicyError, match=r"policy.yaml: stages.m1.steps.0.channel"):
        load_policy(path)
    with pytest.raises(PolicyError, match="DUNNING_POLICY_FILE"):
        load_policy(tmp_path / "missing.yaml")
