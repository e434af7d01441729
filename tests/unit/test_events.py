"""Events: strict wire models and the dead-letter code of every kind of bad input."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.events import (
    MAX_EVENT_BYTES,
    BadEvent,
    Escalated,
    Hold,
    OptedOut,
    PaymentReceived,
    decode_json,
    event_json_schema,
    parse_event,
    validate_event,
)

SAMPLES = Path(__file__).parent.parent / "samples"


def bad(body: bytes) -> BadEvent:
    with pytest.raises(BadEvent) as caught:
        parse_event(body)
    return caught.value


def test_every_valid_sample_parses_into_its_type() -> None:
    kinds = {
        "escalated_m1_cn.json": Escalated, "escalated_early_us.json": Escalated,
        "escalated_m3_letter_cn.json": Escalated, "payment_received.json": PaymentReceived,
        "hold_dispute.json": Hold, "opted_out.json": OptedOut,
    }
    for name, kind in kinds.items():
        assert isinstance(parse_event((SAMPLES / name).read_bytes()), kind), name


def test_money_is_decimal_and_times_are_aware() -> None:
    event = parse_event((SAMPLES / "escalated_m1_cn.json").read_bytes())
    assert isinstance(event, Escalated)
    assert event.account.amount_due == Decimal("1830.00")
    assert isinstance(event.account.amount_due, Decimal)
    assert event.occurred_at.utcoffset() is not None


def test_jurisdiction_falls_back_to_the_address_country() -> None:
    event = parse_event((SAMPLES / "escalated_m3_letter_cn.json").read_bytes())
    assert isinstance(event, Escalated)
    assert event.jurisdiction is None
    assert event.ruling_jurisdiction == "CN"


def test_float_money_is_invalid_and_names_the_field() -> None:
    error = bad((SAMPLES / "invalid" / "float_money.json").read_bytes())
    assert error.code == "invalid_event"
    assert "account.amount_due" in error.detail
    assert "decimal string" in error.detail


def test_naive_time_is_invalid_and_names_the_field() -> None:
    error = bad((SAMPLES / "invalid" / "naive_time.json").read_bytes())
    assert error.code == "invalid_event"
    assert "occurred_at" in error.detail


def test_truncated_json_is_invalid_json() -> None:
    assert bad((SAMPLES / "invalid" / "truncated.json").read_bytes()).code == "invalid_json"


def test_nan_is_invalid_json() -> None:
    body = b'{"event_id": "e", "type": "payment.received", "amount": NaN}'
    assert bad(body).code == "invalid_json"


def test_non_utf8_is_invalid_json() -> None:
    assert bad('{"event_id": "é"}'.encode("latin-1")).code == "invalid_json"


def test_a_json_array_is_not_an_event() -> None:
    error = bad(b"[1, 2]")
    assert error.code == "invalid_event"
    assert "object" in error.detail


def test_unknown_type_is_named() -> None:
    error = bad(b'{"event_id": "e", "type": "account.closed"}')
    assert error.code == "unknown_type"
    assert "account.closed" in error.detail


def test_oversized_event_is_too_large() -> None:
    body = json.dumps({"event_id": "e", "pad": "x" * MAX_EVENT_BYTES}).encode()
    assert bad(body).code == "too_large"


def test_context_must_be_flat_and_small() -> None:
    data = json.loads((SAMPLES / "escalated_m1_cn.json").read_text())
    data["context"] = {"nested": {"a": 1}}
    error = bad(json.dumps(data).encode())
    assert error.code == "invalid_event" and "context" in error.detail
    data["context"] = {f"k{i}": i for i in range(33)}
    assert "at most 32" in bad(json.dumps(data).encode()).detail


def test_hold_reason_outside_the_list_is_invalid() -> None:
    data = json.loads((SAMPLES / "hold_dispute.json").read_text())
    data["reason"] = "vacation"
    error = bad(json.dumps(data).encode())
    assert error.code == "invalid_event" and "reason" in error.detail


def test_event_id_longer_than_128_is_invalid() -> None:
    data = json.loads((SAMPLES / "hold_dispute.json").read_text())
    data["event_id"] = "x" * 129
    assert "event_id" in bad(json.dumps(data).encode()).detail


def test_event_schema_says_money_is_a_string() -> None:
    schema = json.dumps(event_json_schema())
    assert '"amount_due": {' in schema
    account = event_json_schema()["$defs"]["Account"]["properties"]["amount_due"]
    assert account["type"] == "string"


def _step_by_step(body: bytes) -> object:
    """What the intake made of an event before it parsed straight from bytes."""
    try:
        return validate_event(decode_json(body))
    except BadEvent as exc:
        return (exc.code, exc.detail)


def _parsed(body: bytes) -> object:
    try:
        return parse_event(body)
    except BadEvent as exc:
        return (exc.code, exc.detail)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=12), st.sampled_from(["1830.00", " 12.5 ", "1e3", "-0",
                                                            "NaN", "2026-11-28T09:30:00+08:00",
                                                            "2026-11-28T09:30:00"]))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from([("event_id",), ("occurred_at",), ("account", "amount_due"),
                              ("account", "currency"), ("account", "days_past_due"),
                              ("account", "card_last4"), ("debtor", "locale"),
                              ("debtor", "name"), ("context", "note"), ("stage",)]),
       value=_SCALARS, escape=st.booleans())
def test_parsing_straight_from_bytes_answers_as_the_step_by_step_path(
        field: tuple[str, ...], value: object, escape: bool) -> None:
    data = json.loads((SAMPLES / "escalated_m1_cn.json").read_bytes())
    target = data
    for key in field[:-1]:
        target = target.setdefault(key, {})
    target[field[-1]] = value
    body = json.dumps(data, ensure_ascii=escape).encode()
    assert _parsed(body) == _step_by_step(body)


def test_a_key_given_twice_counts_once_as_the_last_one_in_both_paths() -> None:
    body = (SAMPLES / "escalated_m1_cn.json").read_bytes().replace(
        b'"event_id"', b'"event_id": "first", "event_id"', 1)
    assert _parsed(body) == _step_by_step(body)
    assert parse_event(body).event_id != "first"
