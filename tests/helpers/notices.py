"""Notices rendered from the shipped templates and sample events, as the worker renders them,
and the poppler tools that read a PDF back (pdftotext, pdffonts, pdfinfo)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from service.channels.base import Address, Channel, RenderedNotice
from service.events import Escalated, validate_event
from service.policy import load_policy
from service.rendering import Renderer, RenderInput

ROOT = Path(__file__).parent.parent.parent
TEMPLATES = ROOT / "templates"
SAMPLES = ROOT / "tests" / "samples"
TEMPLATES_URL = TEMPLATES.resolve().as_uri() + "/"
TODAY = date(2026, 12, 21)


def sample_event(name: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(event.get(key), dict):
            event[key] = {**event[key], **value}
        else:
            event[key] = value
    return event


def us_event(stage: str, **changes: Any) -> dict[str, Any]:
    """The US sample at another stage (and, for `recovery`, a validation notice's context)."""
    context = {"itemization_date": "2026-06-30", "itemization_amount": "3000.00",
               "interest_since": "95.44", "fees_since": "25.00", "payments_since": "0.00",
               "validation_end_date": "2027-01-29"} if stage == "recovery" else {}
    base = {"event_id": f"evt-us-{stage}", "stage": stage,
            "account": {"days_past_due": 112, "amount_due": "3120.44"}, "context": context}
    return sample_event("escalated_early_us.json", **{**base, **changes})


def rendered_notice(event: dict[str, Any], template: str, channel: Channel,
                    locale: str | None = None, notice_id: str = "evt-test.0",
                    claimed_at: datetime | None = None) -> RenderedNotice:
    """One notice of ``event`` rendered with the shipped templates, as the dispatcher does."""
    escalation = validate_event(event)
    assert isinstance(escalation, Escalated)
    policy = load_policy(TEMPLATES / "policy.yaml")
    ladder = policy.ladder_for(escalation.stage, escalation.ruling_jurisdiction)
    data = RenderInput(
        notice_id=notice_id, channel=channel, template=template,
        locale=locale or escalation.debtor.locale, stage=escalation.stage,
        account=escalation.account.model_dump(), debtor=escalation.debtor.model_dump(),
        event=escalation.model_dump(), context=dict(escalation.context), sender=ladder.sender,
        today=TODAY)
    rendered = Renderer(TEMPLATES, policy.default_locale).render(data)
    address = escalation.debtor.address
    return RenderedNotice(
        notice_id=notice_id, event_id=escalation.event_id, channel=channel, template=template,
        locale=rendered.locale, destination=escalation.debtor.phone or "letter",
        parts=rendered.parts, recipient_name=escalation.debtor.name,
        address=Address(tuple(address.lines), address.city, address.region, address.postal_code,
                        address.country) if address else None,
        sender=ladder.sender, claimed_at=claimed_at)


def poppler(tool: str, *args: str) -> str:
    """Run a poppler-utils tool (Debian poppler-utils; `.ci/run` installs it)."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is missing: install the Debian package poppler-utils")
    result = subprocess.run([found, *args], capture_output=True, text=True, timeout=60,
                            check=True)
    return result.stdout


def pdf_text(pdf: Path, *, page: int | None = None, window_pt: tuple[float, ...] = ()) -> str:
    """The text of a PDF (of one page; of one rectangle x, y, width, height in points)."""
    args = ["-layout", "-enc", "UTF-8"]
    if page is not None:
        args += ["-f", str(page), "-l", str(page)]
    if window_pt:
        x, y, w, h = (str(round(v)) for v in window_pt)
        args += ["-r", "72", "-x", x, "-y", y, "-W", w, "-H", h]
    return poppler("pdftotext", *args, str(pdf), "-")


def no_font_has(*candidates: str) -> str | None:
    """The first of ``candidates`` that no installed font covers (fontconfig says so)."""
    for char in candidates:
        if not fc_list(f":charset={ord(char):x}"):
            return char
    return None


def fc_list(pattern: str) -> str:
    found = shutil.which("fc-list")
    if found is None:
        pytest.fail("fc-list is missing: install fontconfig")
    return subprocess.run([found, pattern, "family"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()
