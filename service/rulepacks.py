"""Contact-rule packs as data (the ``rule_packs`` section of policy.yaml) and their selection.

The code implements rule *types*; packs give them parameters and cite their sources, so
counsel can review a pack without reading Python (COMPLIANCE.md). Packs selected for an
event merge most-restrictive-wins: every rule of every selected pack must pass.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.channels.base import Channel

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
_SPAN = re.compile(r"^(\d+)\s*(d|h|min)$")
CALENDAR_DAY = "calendar_day"


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    channels: list[Channel] = Field(min_length=1)
    note: str = ""


class QuietHours(_Rule):
    """Contact only inside the allowed local window; otherwise defer to its next opening."""

    type: Literal["quiet_hours"]
    allowed: str  # "08:00-21:00", local time of the debtor

    @field_validator("allowed")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _WINDOW.match(value):
            raise ValueError(f"{value!r} is not a window like 08:00-21:00")
        return value

    @property
    def bounds(self) -> tuple[time, time | None]:
        """(opens, closes); closes None means midnight at the end of the day."""
        start, end = self.allowed.split("-")
        opens = time(int(start[:2]), int(start[3:]))
        closes = None if end == "24:00" else time(int(end[:2]), int(end[3:]))
        return opens, closes


class FrequencyCap(_Rule):
    """At most ``max`` contacts on ``channels`` per scope in the window."""

    type: Literal["frequency_cap"]
    scope: Literal["debtor", "account", "destination"]
    window: str  # "7d", "1d", "12h" (rolling) or "calendar_day" (the debtor's local day)
    max: int = Field(ge=1, le=10_000)  # to allow none, use a hold or leave the step out
    on_exceed: Literal["defer", "suppress"] = "defer"

    @field_validator("window")
    @classmethod
    def _span(cls, value: str) -> str:
        if value != CALENDAR_DAY and not _SPAN.match(value):
            raise ValueError(f"{value!r} is not a window like 7d, 24h or calendar_day")
        return value

    @property
    def span(self) -> timedelta | None:
        """The rolling window, or None for a calendar day."""
        return None if self.window == CALENDAR_DAY else parse_span(self.window)


class Cooldown(_Rule):
    """No contact on ``channels`` for ``days`` after a trigger (a phone conversation)."""

    type: Literal["cooldown"]
    trigger: Literal["conversation"] = "conversation"
    scope: Literal["debtor", "account", "destination"] = "account"
    days: int = Field(ge=1, le=365)


class ContentRequired(_Rule):
    """Templates on ``channels`` must carry the named disclosures."""

    type: Literal["content_required"]
    disclosures: list[str] = Field(min_length=1)


Rule = Annotated[QuietHours | FrequencyCap | Cooldown | ContentRequired,
                 Field(discriminator="type")]


class Disclosure(BaseModel):
    """What a required disclosure looks like in a rendered notice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    pattern: str | None = None  # a regular expression the rendered text must match
    sender_fields: list[str] = Field(default_factory=list)  # or: contains one of these values

    @model_validator(mode="after")
    def _something_to_check(self) -> Disclosure:
        if not self.pattern and not self.sender_fields:
            raise ValueError("a disclosure needs a pattern or sender_fields")
        if self.pattern:
            re.compile(self.pattern)
        return self


class RulePack(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)  # where the parameters come from, for counsel
    fallback_timezone: str | None = None
    rules: list[Rule] = Field(default_factory=list)


class Compliance(BaseModel):
    """The rule packs, the disclosures they name and which packs bind which jurisdiction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packs: dict[str, RulePack] = Field(default_factory=dict)
    disclosures: dict[str, Disclosure] = Field(default_factory=dict)
    select: dict[str, list[str]] = Field(default_factory=dict)
    default: list[str] = Field(default_factory=list)  # packs for an unlisted jurisdiction

    @model_validator(mode="after")
    def _names_exist(self) -> Compliance:
        for key, names in [*self.select.items(), ("default", self.default)]:
            for name in names:
                if name not in self.packs:
                    raise ValueError(f"select.{key} names pack {name!r}, which is not defined")
        for name, pack in self.packs.items():
            for rule in pack.rules:
                if isinstance(rule, ContentRequired):
                    missing = set(rule.disclosures) - set(self.disclosures)
                    if missing:
                        raise ValueError(f"pack {name} rule {rule.id} names undefined "
                                         f"disclosures {sorted(missing)}")
        return self

    def packs_for(self, jurisdiction: str | None, region: str | None = None) -> list[str]:
        """Pack names binding an event: its jurisdiction's, plus a state overlay by address."""
        names = list(self.select.get(jurisdiction or "", self.default))
        if jurisdiction and region:
            overlay = self.select.get(f"{jurisdiction.split('-')[0]}-{region}", [])
            names += [n for n in overlay if n not in names]
        return names

    def rules_for(self, packs: list[str], channel: str) -> list[QuietHours | FrequencyCap |
                                                            Cooldown | ContentRequired]:
        return [rule for name in packs for rule in self.packs[name].rules
                if channel in rule.channels]

    def fallback_zone(self, packs: list[str]) -> str | None:
        return next((self.packs[n].fallback_timezone for n in packs
                     if self.packs[n].fallback_timezone), None)


def parse_span(text: str) -> timedelta:
    match = _SPAN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a span like 7d, 24h or 30min")
    amount, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=amount), "h": timedelta(hours=amount),
            "min": timedelta(minutes=amount)}[unit]
