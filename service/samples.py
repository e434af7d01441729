"""Built-in sample events: what `dunning templates check` renders every template against."""

from __future__ import annotations

from typing import Any

_CN_DEBTOR = {
    "debtor_id": "D-SAMPLE-CN", "name": "张伟", "locale": "zh-CN", "timezone": "Asia/Shanghai",
    "email": "debtor@example.com", "phone": "+8613800138000",
    "address": {"lines": ["朝阳区建国路88号", "3号楼1201"], "city": "北京市", "region": "北京",
                "postal_code": "100022", "country": "CN"},
}
_US_DEBTOR = {
    "debtor_id": "D-SAMPLE-US", "name": "Maria Gonzalez", "locale": "en-US",
    "timezone": "America/New_York", "email": "debtor@example.org", "phone": "+12025550143",
    "address": {"lines": ["1600 Pennsylvania Ave NW"], "city": "Washington", "region": "DC",
                "postal_code": "20500", "country": "US"},
}
_CONTEXT = {
    "itemization_date": "2026-06-30", "itemization_amount": "1709.56",  # + 95.44 + 25.00 = 1830.00
    "interest_since": "95.44", "fees_since": "25.00", "payments_since": "0.00",
    "validation_end_date": "2026-12-29",
}


def escalation(stage: str, ladder: str) -> dict[str, Any]:
    cn = ladder == "CN"
    return {
        "event_id": f"evt-sample-{stage}", "type": "delinquency.escalated",
        "occurred_at": "2026-11-28T09:30:00+08:00" if cn else "2026-11-28T09:30:00-05:00",
        "stage": stage, "jurisdiction": "CN" if cn else "US",
        "account": {
            "account_id": "CC-SAMPLE-1", "product": "credit_card", "card_last4": "4321",
            "currency": "CNY" if cn else "USD", "balance": "15230.50",
            "amount_due": "1830.00", "minimum_payment": "500.00", "due_date": "2026-10-25",
            "days_past_due": 34,
        },
        "debtor": dict(_CN_DEBTOR if cn else _US_DEBTOR),
        "channels": None,
        "context": {**_CONTEXT, "hotline": "400-820-0000"} if cn else dict(_CONTEXT),
    }


def payment(ladder: str) -> dict[str, Any]:
    return {
        "event_id": "evt-sample-payment", "type": "payment.received",
        "occurred_at": "2026-11-28T20:15:00+08:00",
        "account": {"account_id": "CC-SAMPLE-1"}, "amount": "1830.00",
        "currency": "CNY" if ladder == "CN" else "USD", "cures": True,
    }
