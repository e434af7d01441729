"""Contact rules: may this notice go now, to whom? Pure: the caller supplies what the ledger knows.

Evaluation order (COMPLIANCE.md): holds, then destination eligibility, then opt-outs.
Quiet hours, caps and cooldowns come in a later step of the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import phonenumbers

Verdict = Literal["send", "suppress", "cancel", "defer"]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str | None = None
    rule: str | None = None  # the rule id that made the decision, kept in the ledger

    @property
    def sends(self) -> bool:
        return self.verdict == "send"


SEND = Decision("send")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a notice goes, or why it cannot go anywhere."""

    value: str | None
    problem: str | None = None  # "no_destination" or "invalid_destination"


def phone_destination(phone: str | None) -> Destination:
    if not phone or not phone.strip():
        return Destination(None, "no_destination")
    text = phone.strip()
    if not text.startswith("+") or not text[1:].isdigit():
        return Destination(None, "invalid_destination")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return Destination(None, "invalid_destination")
    if not phonenumbers.is_valid_number(number):
        return Destination(None, "invalid_destination")
    return Destination(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def email_destination(email: str | None) -> Destination:
    if not email or not email.strip():
        return Destination(None, "no_destination")
    text = email.strip()
    local, _, domain = text.rpartition("@")
    if not local or "." not in domain or any(c.isspace() for c in text) or "\r" in text:
        return Destination(None, "invalid_destination")
    return Destination(text.lower())


def letter_destination(address: dict[str, Any] | None) -> Destination:
    if not address or not address.get("lines"):
        return Destination(None, "no_destination")
    parts = [*address["lines"], address.get("city"), address.get("postal_code"),
             address.get("country")]
    return Destination(", ".join(str(p) for p in parts if p))


def destination_for(channel: str, debtor: dict[str, Any]) -> Destination:
    if channel in ("sms", "voice"):
        return phone_destination(debtor.get("phone"))
    if channel == "email":
        return email_destination(debtor.get("email"))
    return letter_destination(debtor.get("address"))


def evaluate(*, hold_reason: str | None, destination: Destination,
             opted_out: bool) -> Decision:
    """The rules that need no clock: hold, destination, opt-out, in that order."""
    if hold_reason:
        return Decision("suppress", f"hold:{hold_reason}", "hold")
    if destination.problem:
        return Decision("suppress", destination.problem, "destination")
    if opted_out:
        return Decision("suppress", "opted_out", "opt_out")
    return SEND
