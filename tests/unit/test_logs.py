"""Personal data never reaches a log line unmasked."""

from __future__ import annotations

from service.logs import mask_personal_data, mask_text


def test_personal_keys_are_masked_whatever_they_hold() -> None:
    line = mask_personal_data(None, "info", {
        "event": "x", "name": "张伟", "phone": "+8613800138000", "email": "zhang.wei@example.com",
        "address": {"lines": ["朝阳区建国路88号"]}, "notice_id": "ntc_1"})
    assert line["name"] == "***"
    assert "13800138000" not in str(line["phone"])
    assert line["email"] == "***@example.com"
    assert "建国路" not in str(line["address"])
    assert line["notice_id"] == "ntc_1"


def test_phone_numbers_and_emails_inside_free_text_are_masked() -> None:
    text = mask_text("sending to +8613800138000 and maria.gonzalez@example.org failed")
    assert "13800138000" not in text and "maria.gonzalez" not in text
    assert "example.org" in text


def test_exceptions_are_masked_too() -> None:
    line = mask_personal_data(None, "error", {"event": "x", "error": ValueError("+12025550143")})
    assert "2025550143" not in str(line["error"])
