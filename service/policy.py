"""The escalation policy: ``policy.yaml`` loaded and checked, and ``plan(event) -> steps``. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.channels.base import Channel
from service.events import BadEvent, Escalated, PaymentReceived
from service.rulepacks import Compliance

ON_PAYMENT = "on_payment"


class PolicyError(Exception):
    """policy.yaml is missing or wrong; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StepSpec(_Strict):
    channel: Channel
    template: str = Field(min_length=1)
    segment_budget: int | None = Field(default=None, ge=1, le=10)


class StageSpec(_Strict):
    ladder: str | None = None
    description: str = ""
    steps: list[StepSpec] = Field(min_length=1)


class OnPayment(_Strict):
    steps: list[StepSpec] = Field(default_factory=list)


class Ladder(_Strict):
    locale: str = "en-US"
    fallback_timezone: str = "UTC"
    sender: dict[str, str] = Field(default_factory=dict)


class Policy(_Strict):
    version: int = 1
    default_locale: str = "en-US"
    sms_segment_budget: int = Field(default=3, ge=1, le=10)
    ladders: dict[str, Ladder] = Field(default_factory=dict)
    jurisdictions: dict[str, str] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    on_payment: OnPayment = Field(default_factory=OnPayment)
    rule_packs: Compliance = Field(default_factory=Compliance)

    @model_validator(mode="after")
    def _ladders_exist(self) -> Policy:
        for name, stage in self.stages.items():
            if stage.ladder is not None and stage.ladder not in self.ladders:
                raise ValueError(f"stage {name} names ladder {stage.ladder!r}, which is not defined")
        for key, ladder in self.jurisdictions.items():
            if ladder not in self.ladders:
                raise ValueError(f"jurisdiction {key} maps to undefined ladder {ladder!r}")
        return self

    def ladder_of_stage(self, stage: str) -> Ladder:
        name = self.stages[stage].ladder
        return self.ladders[name] if name else Ladder(locale=self.default_locale)

    def ladder_for(self, stage: str | None, jurisdiction: str | None) -> Ladder:
        """The ladder of a stage; for payment notices, the one of the jurisdiction."""
        if stage and stage in self.stages:
            return self.ladder_of_stage(stage)
        name = self.jurisdictions.get(jurisdiction or "") or self.jurisdictions.get(
            (jurisdiction or "").split("-")[0]
        )
        if name:
            return self.ladders[name]
        return Ladder(locale=self.default_locale)

    def budget_for(self, step: StepSpec) -> int:
        return step.segment_budget or self.sms_segment_budget


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One notice to be: (event, step) with its stable id."""

    notice_id: str
    step_index: int
    channel: Channel
    template: str
    stage: str


def notice_id_for(event_id: str, step_key: str) -> str:
    """Stable notice id derived from the event id and the step (CONTRACT.md §4)."""
    digest = hashlib.sha256(f"{event_id}\x1f{step_key}".encode()).hexdigest()
    return f"ntc_{digest[:26]}"


def _steps(event_id: str, stage: str, specs: list[StepSpec],
           channels: list[Channel] | None) -> list[PlannedStep]:
    planned = []
    for index, spec in enumerate(specs):
        if channels is not None and spec.channel not in channels:
            continue
        key = f"{stage}/{index}/{spec.channel}/{spec.template}"
        planned.append(PlannedStep(notice_id_for(event_id, key), index, spec.channel,
                                   spec.template, stage))
    return planned


def check_stage(policy: Policy, event: Escalated) -> None:
    if event.stage not in policy.stages:
        known = ", ".join(policy.stages)
        raise BadEvent("unknown_stage", f"field stage: {event.stage!r} is not a stage of the "
                                        f"policy (known: {known})")


def plan_escalation(policy: Policy, event: Escalated) -> list[PlannedStep]:
    check_stage(policy, event)
    spec = policy.stages[event.stage]
    return _steps(event.event_id, event.stage, spec.steps, event.channels)


def plan_payment(policy: Policy, event: PaymentReceived) -> list[PlannedStep]:
    if not event.cures:
        return []
    return _steps(event.event_id, ON_PAYMENT, policy.on_payment.steps, None)


def load_policy(path: Path) -> Policy:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such file; set DUNNING_POLICY_FILE or "
                          "DUNNING_TEMPLATES_DIR") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise PolicyError(f"{path}: {where}: {error['msg']}") from None
