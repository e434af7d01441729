"""`dunning render`: one notice rendered from an event file, for a template author's eyes."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Settings
from service.events import BadEvent, Escalated, validate_event
from service.policy import PolicyError, load_policy
from service.rendering import Renderer, RenderInput, TemplateMissing, sms_segments

if TYPE_CHECKING:
    from service.channels.pdf import Pdf


class PreviewError(Exception):
    """The event, the policy or the template is not usable; the message says which."""


def preview(settings: Settings, event_file: Path, template: str, channel: str,
            locale: str | None) -> str:
    try:
        event = validate_event(json.loads(event_file.read_text(encoding="utf-8")))
        policy = load_policy(settings.policy_path)
    except (OSError, ValueError, BadEvent, PolicyError) as exc:
        raise PreviewError(str(exc)) from None
    if not isinstance(event, Escalated):
        raise PreviewError(f"{event_file}: render takes a delinquency.escalated event")
    ladder = policy.ladder_for(event.stage, event.ruling_jurisdiction)
    data = RenderInput(
        notice_id="ntc_preview", channel=channel, template=template,
        locale=locale or event.debtor.locale, stage=event.stage,
        account=event.account.model_dump(), debtor=event.debtor.model_dump(),
        event=event.model_dump(), context=dict(event.context), sender=ladder.sender,
        today=date.today())
    try:
        rendered = Renderer(settings.templates_dir, policy.default_locale).render(data)
    except TemplateMissing as exc:
        raise PreviewError(str(exc)) from None
    parts = rendered.parts
    if channel == "email":
        return (f"Subject: {parts['subject']}\nLocale: {rendered.locale}\n\n{parts['text']}\n"
                f"\n----- text/html -----\n{parts['html']}")
    if channel == "sms":
        count = sms_segments(parts["text"])
        return (f"{parts['text']}\n\n[{count.encoding}, {count.units} units, "
                f"{count.segments} segment(s), locale {rendered.locale}]")
    return parts.get("text") or parts["html"]


def letter_pdf(settings: Settings, html: str) -> Pdf:
    """The PDF of a previewed letter, rendered in this process (WeasyPrint is imported here)."""
    from service.channels.pdf import render_pdf

    return render_pdf(html, settings.templates_dir.resolve().as_uri() + "/")
