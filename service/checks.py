"""`dunning templates check`: render every template file against sample events and report
undefined variables, syntax errors, missing files and SMS over the segment budget."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError

from service import samples
from service.events import Escalated, validate_event
from service.policy import ON_PAYMENT, Policy, PolicyError, StepSpec, load_policy
from service.rendering import CHANNEL_FILES, Renderer, RenderInput, sms_segments
from service.rules import missing_disclosures


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class Usage:
    """One use of a template by the policy: which stage, channel and ladder."""

    stage: str
    ladder: str
    step: StepSpec


def _usages(policy: Policy) -> dict[str, list[Usage]]:
    found: dict[str, list[Usage]] = {}
    for name, stage in policy.stages.items():
        for step in stage.steps:
            found.setdefault(step.template, []).append(Usage(name, stage.ladder or "US", step))
    for ladder in list(policy.ladders) or ["US"]:
        for step in policy.on_payment.steps:
            found.setdefault(step.template, []).append(Usage(ON_PAYMENT, ladder, step))
    return found


def _line_of(exc: BaseException, template_path: str) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.replace("\\", "/").endswith(template_path):
            return f" (line {frame.lineno})"
    return ""


def _input(usage: Usage, template: str, locale: str, policy: Policy) -> RenderInput:
    escalation = validate_event(samples.escalation(
        usage.stage if usage.stage != ON_PAYMENT else "sample", usage.ladder))
    assert isinstance(escalation, Escalated)
    event = escalation
    if usage.stage == ON_PAYMENT:
        event = validate_event(samples.payment(usage.ladder))  # type: ignore[assignment]
    sender = policy.ladders[usage.ladder].sender if usage.ladder in policy.ladders else {}
    return RenderInput(
        notice_id="ntc_sample", channel=usage.step.channel, template=template, locale=locale,
        stage=usage.stage, account=escalation.account.model_dump(),
        debtor=escalation.debtor.model_dump(), event=event.model_dump(),
        context=dict(escalation.context), sender=sender, today=date(2026, 11, 28))


class TemplateChecker:
    def __init__(self, templates_dir: Path, policy_path: Path | None = None) -> None:
        self.dir = templates_dir
        self.policy_path = policy_path or templates_dir / "policy.yaml"
        self.problems: list[Problem] = []
        self.rendered = 0

    def run(self) -> list[Problem]:
        try:
            policy = load_policy(self.policy_path)
        except PolicyError as exc:
            return [Problem(str(self.policy_path), str(exc))]
        renderer = Renderer(self.dir, policy.default_locale)
        for template, usages in sorted(_usages(policy).items()):
            self._check_template(renderer, policy, template, usages)
        return list(dict.fromkeys(self.problems))  # a file used twice is reported once

    def _check_template(self, renderer: Renderer, policy: Policy, template: str,
                        usages: list[Usage]) -> None:
        folder = self.dir / template
        if not folder.is_dir():
            stages = sorted({u.stage for u in usages})
            self.problems.append(Problem(str(folder), f"missing: the policy uses template "
                                                      f"{template!r} in {', '.join(stages)}"))
            return
        locales = sorted(p.name for p in folder.iterdir() if p.is_dir())
        for usage in usages:
            if renderer._resolve(template, usage.step.channel, policy.default_locale) is None:
                files = ", ".join(CHANNEL_FILES[usage.step.channel].values())
                self.problems.append(Problem(
                    str(folder / policy.default_locale),
                    f"missing {usage.step.channel} files ({files}) needed by stage {usage.stage}"))
            for locale in locales:
                self._check_files(renderer, policy, template, locale, usage)

    def _check_files(self, renderer: Renderer, policy: Policy, template: str, locale: str,
                     usage: Usage) -> None:
        data = _input(usage, template, locale, policy)
        variables = data.variables(locale)
        for part, filename in CHANNEL_FILES[usage.step.channel].items():
            relative = f"{template}/{locale}/{filename}"
            path = self.dir / relative
            if not path.is_file():
                continue
            text = self._render_file(renderer, relative, variables)
            if text is None:
                continue
            self.rendered += 1
            if usage.step.channel == "sms" and part == "text":
                self._check_sms(relative, text.strip(), policy.budget_for(usage.step))
            if part != "subject":
                self._check_disclosures(policy, usage, relative, text, data)

    def _check_disclosures(self, policy: Policy, usage: Usage, relative: str, text: str,
                           data: RenderInput) -> None:
        """Every disclosure the ladder's rule packs require on this channel (COMPLIANCE.md)."""
        compliance = policy.rule_packs
        packs = compliance.packs_for(usage.ladder)
        rules = compliance.rules_for(packs, usage.step.channel)
        values = {**data.sender, **{k: str(v) for k, v in data.context.items()}}
        for rule_id, name in missing_disclosures(rules, compliance.disclosures, text, values):
            pack = next(p for p in packs if any(r.id == rule_id for r in compliance.packs[p].rules))
            self.problems.append(Problem(
                str(self.dir / relative),
                f"missing disclosure {name!r} required by rule {rule_id} (pack {pack}): "
                f"{compliance.disclosures[name].description}"))

    def _render_file(self, renderer: Renderer, relative: str,
                     variables: dict[str, Any]) -> str | None:
        path = str(self.dir / relative)
        try:
            return renderer.env.get_template(relative).render(variables)
        except UndefinedError as exc:
            self.problems.append(Problem(path, f"undefined variable{_line_of(exc, relative)}: "
                                               f"{exc.message}"))
        except TemplateSyntaxError as exc:
            where = exc.filename or path
            self.problems.append(Problem(where, f"syntax error (line {exc.lineno}): {exc.message}"))
        except Exception as exc:  # noqa: BLE001 - any render failure is a template problem
            self.problems.append(Problem(path, f"render failed{_line_of(exc, relative)}: "
                                               f"{type(exc).__name__}: {exc}"))
        return None

    def _check_sms(self, relative: str, text: str, budget: int) -> None:
        count = sms_segments(text)
        if count.segments > budget:
            self.problems.append(Problem(
                str(self.dir / relative),
                f"SMS needs {count.segments} segments ({count.units} {count.encoding} units); "
                f"the budget is {budget}"))
