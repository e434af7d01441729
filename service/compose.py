"""From a claimed notice to what may be sent: its event, rules, rendering and disclosures.

Pure apart from reading the event through the cache; the dispatcher calls these stages in
order and records what they decide.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from service.channels.base import Address, RenderedNotice
from service.events import AnyEvent, Escalated, PaymentReceived, stored_event, validate_event
from service.ledger import SqlLedger
from service.policy import Policy
from service.rendering import Renderer, RenderInput, sms_segments
from service.rules import Subject, candidate_zones, missing_disclosures


class NotSendable(Exception):
    """A notice that can never go: template broken, SMS over budget, disclosure missing."""

    def __init__(self, reason: str, rule: str = "render") -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


class EventCache:
    """Parsed events by id, so no notice re-parses its event."""

    def __init__(self, ledger: SqlLedger, size: int = 4096) -> None:
        self.ledger = ledger
        self.size = size
        self._items: OrderedDict[str, AnyEvent] = OrderedDict()

    async def get(self, event_id: str) -> AnyEvent | None:
        return (await self.load([event_id])).get(event_id)

    def remember(self, events: list[AnyEvent]) -> None:
        """Events the intake has just recorded, as it parsed them: the notices of a fresh
        event then need no read of the ledger and no parse (the ledger keeps the first of
        two events with one id, and so must the caller: only new events come here)."""
        for event in events:
            self._items[event.event_id] = event
            self._items.move_to_end(event.event_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    async def load(self, event_ids: list[str]) -> dict[str, AnyEvent]:
        """The events of a batch, reading those not cached in one query."""
        missing = list({e for e in event_ids if e not in self._items})
        if missing:
            bodies = await self.ledger.event_bodies(missing)
            self.remember([stored_event(body) for body in bodies.values()])
        found = {}
        for event_id in event_ids:
            if event_id in self._items:
                self._items.move_to_end(event_id)
                found[event_id] = self._items[event_id]
        return found

    async def context(self, notice: dict[str, Any]) -> tuple[AnyEvent, Escalated] | None:
        """The notice's event and the escalation that describes account and debtor."""
        event = await self.get(notice["event_id"])
        if isinstance(event, Escalated):
            return event, event
        if isinstance(event, PaymentReceived):
            body = await self.ledger.read(
                lambda conn: self.ledger.latest_escalation(conn, notice["account_id"]))
            escalation = validate_event(body) if body else None
            if isinstance(escalation, Escalated):
                return event, escalation
        return None


@dataclass(frozen=True, slots=True)
class Composer:
    policy: Policy
    renderer: Renderer

    def packs(self, escalation: Escalated) -> list[str]:
        address = escalation.debtor.address
        return self.policy.rule_packs.packs_for(escalation.ruling_jurisdiction,
                                                address.region if address else None)

    def rules(self, escalation: Escalated, channel: str) -> list[Any]:
        return self.policy.rule_packs.rules_for(self.packs(escalation), channel)

    def subject(self, notice: dict[str, Any], escalation: Escalated,
                destination: str) -> Subject:
        ladder = self.policy.ladder_for(escalation.stage, escalation.ruling_jurisdiction)
        fallback = self.policy.rule_packs.fallback_zone(self.packs(escalation))
        zones = candidate_zones(escalation.debtor.model_dump(),
                                fallback or ladder.fallback_timezone)
        return Subject(notice["channel"], notice["account_id"], notice["debtor_id"],
                       destination, tuple(zones))

    def render(self, notice: dict[str, Any], event: AnyEvent, escalation: Escalated,
               destination: str, now: datetime) -> RenderedNotice:
        ladder = self.policy.ladder_for(escalation.stage, escalation.ruling_jurisdiction)
        zone = escalation.debtor.timezone or ladder.fallback_timezone
        try:
            today = now.astimezone(ZoneInfo(zone)).date()
        except (KeyError, ValueError):
            today = now.date()
        data = RenderInput(
            notice_id=notice["notice_id"], channel=notice["channel"], template=notice["template"],
            locale=notice["locale"], stage=notice["stage"],
            account=escalation.account.model_dump(), debtor=escalation.debtor.model_dump(),
            event=event.model_dump(), context=dict(escalation.context), sender=ladder.sender,
            today=today)
        try:
            rendered = self.renderer.render(data)
        except Exception as exc:  # noqa: BLE001 - any template error makes the notice unsendable
            raise NotSendable(f"template_error:{type(exc).__name__}") from None
        notice["locale"] = rendered.locale
        self._check_budget(notice, rendered.parts)
        self._check_disclosures(notice, escalation, rendered.parts, ladder.sender)
        address = escalation.debtor.address
        return RenderedNotice(
            notice_id=notice["notice_id"], event_id=notice["event_id"],
            channel=notice["channel"], template=notice["template"], locale=rendered.locale,
            destination=destination, parts=rendered.parts, recipient_name=escalation.debtor.name,
            address=Address(tuple(address.lines), address.city, address.region,
                            address.postal_code, address.country) if address else None,
            sender=ladder.sender, attempt=int(notice["attempts"]), claimed_at=notice["claimed_at"])

    def _check_budget(self, notice: dict[str, Any], parts: dict[str, str]) -> None:
        if notice["channel"] != "sms":
            return
        step = self.policy.stages.get(notice["stage"])
        budget = self.policy.sms_segment_budget
        if step and notice["step_index"] < len(step.steps):
            budget = self.policy.budget_for(step.steps[notice["step_index"]])
        if sms_segments(parts["text"]).segments > budget:
            raise NotSendable("sms_over_segment_budget")

    def _check_disclosures(self, notice: dict[str, Any], escalation: Escalated,
                           parts: dict[str, str], sender: dict[str, str]) -> None:
        values = {**sender, **{k: str(v) for k, v in escalation.context.items()}}
        text = "\n".join(parts.values())
        missing = missing_disclosures(self.rules(escalation, notice["channel"]),
                                      self.policy.rule_packs.disclosures, text, values)
        if missing:
            rule, name = missing[0]
            raise NotSendable(f"missing_disclosure:{name}", rule)
