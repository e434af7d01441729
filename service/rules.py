"""Contact rules: may this notice go now, to whom? Pure: the caller supplies what the ledger knows.

Evaluation order (COMPLIANCE.md): holds, destination eligibility and opt-outs first
(:func:`evaluate`), then content (:func:`missing_disclosures`), then time windows, then caps
and cooldowns (:func:`check_timing`). Nothing here reads a clock or the ledger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel.core import get_global
from phonenumbers import timezone as pn_timezone

from service.rulepacks import ContentRequired, Cooldown, Disclosure, FrequencyCap, QuietHours

Verdict = Literal["send", "suppress", "cancel", "defer"]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str | None = None
    rule: str | None = None  # the rule id that made the decision, kept in the ledger
    not_before: datetime | None = None  # for a deferral: the first instant allowed

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


# ---- time zones -------------------------------------------------------------------------------

def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def candidate_zones(debtor: dict[str, Any], fallback: str | None) -> list[ZoneInfo]:
    """Where the debtor may be: their time zone; else the phone's and the address's zones.

    A phone number in the same country as the address narrows the country to the phone's
    zones; otherwise both count. With no candidate at all, the pack's fallback zone.
    """
    own = _zone(debtor.get("timezone"))
    if own is not None:
        return [own]
    names: list[str] = []
    phone_region = None
    if debtor.get("phone"):
        try:
            number = phonenumbers.parse(str(debtor["phone"]), None)
        except phonenumbers.NumberParseException:
            number = None
        if number is not None and phonenumbers.is_valid_number(number):
            phone_region = phonenumbers.region_code_for_number(number)
            names += [z for z in pn_timezone.time_zones_for_number(number) if "/" in z
                      and not z.startswith("Etc/")]
    country = ((debtor.get("address") or {}).get("country") or "").upper()
    if country and (country != phone_region or not names):
        names += list(get_global("territory_zones").get(country, []))
    zones = [z for z in (_zone(n) for n in dict.fromkeys(names)) if z is not None]
    if zones:
        return zones
    fallback_zone = _zone(fallback)
    return [fallback_zone] if fallback_zone else [ZoneInfo("UTC")]


# ---- time windows, caps, cooldowns (pure: the caller gives now and the history) ----------------

@dataclass(frozen=True, slots=True)
class Contact:
    """A contact the ledger counts: sent, or reserved by a send under way."""

    at: datetime
    channel: str
    account_id: str
    debtor_id: str
    destination: str | None
    conversation: bool = False


@dataclass(frozen=True, slots=True)
class Subject:
    """The notice being decided."""

    channel: str
    account_id: str
    debtor_id: str
    destination: str | None
    zones: tuple[ZoneInfo, ...]


def _in_window(rule: QuietHours, moment: datetime, zone: ZoneInfo) -> bool:
    local = moment.astimezone(zone).time()
    opens, closes = rule.bounds
    return opens <= local and (closes is None or local < closes)


def _opens_after(rule: QuietHours, moment: datetime, zone: ZoneInfo) -> list[datetime]:
    opens, _ = rule.bounds
    day = moment.astimezone(zone).date()
    found = []
    for offset in range(-1, 4):
        local = datetime.combine(day + timedelta(days=offset), opens, tzinfo=zone)
        instant = local.astimezone(UTC)
        if instant > moment:
            found.append(instant)
    return found


def next_allowed(rules: list[QuietHours], zones: tuple[ZoneInfo, ...],
                 now: datetime) -> datetime | None:
    """The first instant at or after ``now`` allowed by every rule in every zone."""
    def allowed(moment: datetime) -> bool:
        return all(_in_window(r, moment, z) for r in rules for z in zones)
    if allowed(now):
        return now
    candidates = sorted({c for r in rules for z in zones for c in _opens_after(r, now, z)})
    return next((c for c in candidates if allowed(c)), None)


def _same_scope(scope: str, contact: Contact, subject: Subject) -> bool:
    if scope == "debtor":
        return contact.debtor_id == subject.debtor_id
    if scope == "account":
        return contact.account_id == subject.account_id
    return contact.destination is not None and contact.destination == subject.destination


def _cap_frees_at(rule: FrequencyCap, subject: Subject, history: list[Contact],
                  moment: datetime) -> datetime | None:
    """None if the cap allows a contact at ``moment``; else when it will."""
    span = rule.span
    if span is None:
        zone = subject.zones[0]
        local_day = moment.astimezone(zone).date()
        start = datetime.combine(local_day, datetime.min.time(), tzinfo=zone).astimezone(UTC)
    else:
        start = moment - span
    counted = sorted(c.at for c in history if c.channel in rule.channels and start < c.at
                     <= moment and _same_scope(rule.scope, c, subject))
    if len(counted) < rule.max:
        return None
    if span is None:
        tomorrow = moment.astimezone(subject.zones[0]).date() + timedelta(days=1)
        return datetime.combine(tomorrow, datetime.min.time(),
                                tzinfo=subject.zones[0]).astimezone(UTC)
    return counted[len(counted) - rule.max] + span


def _cooldown_ends(rule: Cooldown, subject: Subject, history: list[Contact],
                   moment: datetime) -> datetime | None:
    ends = [c.at + timedelta(days=rule.days) for c in history
            if c.conversation and _same_scope(rule.scope, c, subject)]
    latest = max(ends, default=None)
    return latest if latest is not None and latest > moment else None


def _blocked_until(rules: list[Any], subject: Subject, history: list[Contact],
                   moment: datetime) -> tuple[Any, datetime | None] | None:
    """The first rule that blocks ``moment`` and until when (None: never frees)."""
    quiet = [r for r in rules if isinstance(r, QuietHours)]
    if quiet:
        opens = next_allowed(quiet, subject.zones, moment)
        if opens != moment:
            return quiet[0], opens
    for rule in rules:
        if isinstance(rule, FrequencyCap):
            frees = _cap_frees_at(rule, subject, history, moment)
            if frees is not None:
                return rule, frees
        elif isinstance(rule, Cooldown):
            ends = _cooldown_ends(rule, subject, history, moment)
            if ends is not None:
                return rule, ends
    return None


def check_timing(rules: list[Any], subject: Subject, history: list[Contact],
                 now: datetime) -> Decision:
    """Quiet hours, caps and cooldowns, merged: send now, or defer to when all of them allow."""
    first = _blocked_until(rules, subject, history, now)
    if first is None:
        return SEND
    rule, moment = first
    if isinstance(rule, FrequencyCap) and rule.on_exceed == "suppress":
        return Decision("suppress", rule.type, rule.id)
    for _ in range(32):  # each round moves later; windows and caps settle in a few
        if moment is None:
            return Decision("suppress", f"{rule.type}:never_allowed", rule.id)
        blocked = _blocked_until(rules, subject, history, moment)
        if blocked is None:
            return Decision("defer", rule.type, rule.id, not_before=moment)
        moment = blocked[1]
    return Decision("suppress", f"{rule.type}:never_allowed", rule.id)


def missing_disclosures(rules: list[Any], disclosures: dict[str, Disclosure], text: str,
                        values: dict[str, str]) -> list[tuple[str, str]]:
    """(rule id, disclosure) pairs that ``text`` lacks; ``values`` are the sender's fields."""
    missing = []
    for rule in rules:
        if not isinstance(rule, ContentRequired):
            continue
        for name in rule.disclosures:
            wanted = disclosures[name]
            found = bool(wanted.pattern and re.search(wanted.pattern, text))
            found = found or any(values.get(f) and values[f] in text for f in wanted.sender_fields)
            if not found:
                missing.append((rule.id, name))
    return missing
