"""Letters for a print house: a PDF and its JSON manifest in a spool directory.

``<spool>/<YYYY-MM-DD>/<notice_id>.pdf`` with ``<notice_id>.json`` beside it (CONTRACT.md §6a).
The day is the UTC date of the first attempt: a retry, even one after midnight, rewrites the
files of the first attempt (it looks for them in the earlier days' folders first), so a
notice is never two letters. Each file is written to a temporary file and renamed; the
manifest is written last, so a print house that picks letters up by their manifest never
finds one without its PDF. The manifest holds the postal address: it is never logged.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import importlib.util
import json
import re
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

from service.channels.base import Channel, Receipt, RenderedNotice, TransientDeliveryError
from service.channels.outbox import file_stem, write_atomically
from service.channels.pdf import Pdf, PdfRenderer, RendererHealth
from service.config import Settings

MANIFEST_SCHEMA = "dunning.letter/v1"
# owner and group may read: a print house's pickup reads as a member of the spool's group;
# others may not (the files hold names and postal addresses)
SPOOL_FILE_MODE = 0o640
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def write_spool_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the print house's group (blocking)."""
    write_atomically(path, data, SPOOL_FILE_MODE)


def letter_manifest(notice: RenderedNotice, pdf: Pdf, pdf_name: str) -> dict[str, Any]:
    """What a print house needs besides the PDF: who to send it to, and how to check it."""
    return {
        "schema": MANIFEST_SCHEMA,
        "notice_id": notice.notice_id,
        "event_id": notice.event_id,
        "template": notice.template,
        "locale": notice.locale,
        "attempt": notice.attempt,
        "pdf": pdf_name,
        "sha256": hashlib.sha256(pdf.data).hexdigest(),
        "bytes": len(pdf.data),
        "pages": pdf.pages,
        "paper": pdf.paper,
        "recipient": {
            "name": notice.recipient_name,
            "address": asdict(notice.address) if notice.address else None,
        },
        "sender": dict(notice.sender),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def health_problems(health: RendererHealth) -> list[tuple[str, str]]:
    """Warnings for the worker's log at start: (code, one sentence for the operator)."""
    problems = []
    if not health.font_subsetting:
        problems.append(("letter_font_subsetting_unavailable",
                         "WeasyPrint cannot subset fonts (install the Debian package "
                         "libharfbuzz-subset0): a letter takes ~24 s instead of ~0.2 s"))
    if not health.cjk_font:
        problems.append(("letter_cjk_font_missing",
                         "no installed font has Chinese characters (install fonts-noto-cjk): "
                         "Chinese letters will be refused"))
    return problems


async def renderer_problems(renderer: PdfRenderer) -> list[tuple[str, str]]:
    """Start-up warnings of a letter adapter; asking starts and warms up a render process."""
    if importlib.util.find_spec("weasyprint") is None:
        return [("letter_renderer_unavailable", "WeasyPrint is not installed (pip install "
                 "'dunning[letters]'): letters are retried until it is")]
    return health_problems(await renderer.health())


class LetterSpool:
    """The spool directory: where a notice's letter goes, and writing it there (blocking)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def folder_for(self, notice: RenderedNotice) -> Path:
        """The day folder that holds, or will hold, this notice's letter."""
        stem = file_stem(notice.notice_id)
        first_try = (notice.claimed_at or datetime.now(UTC)).astimezone(UTC).date()
        for day in self._days_before(first_try):
            folder = self.directory / day.isoformat()
            if (folder / f"{stem}.pdf").exists() or (folder / f"{stem}.json").exists():
                return folder
        return self.directory / first_try.isoformat()

    def _days_before(self, last: date) -> list[date]:
        """The existing day folders up to ``last``, newest first."""
        if not self.directory.is_dir():
            return []
        days = []
        for folder in self.directory.iterdir():
            if _DAY.match(folder.name) and folder.is_dir():
                try:
                    days.append(date.fromisoformat(folder.name))
                except ValueError:  # 2026-13-45: not a day, not ours
                    continue
        return sorted((day for day in days if day <= last), reverse=True)

    def write(self, notice: RenderedNotice, pdf: Pdf) -> Path:
        """Write the PDF, then its manifest; return the PDF's path relative to the spool."""
        folder = self.folder_for(notice)
        stem = file_stem(notice.notice_id)
        pdf_path = folder / f"{stem}.pdf"
        manifest = letter_manifest(notice, pdf, pdf_path.name)
        write_spool_file(pdf_path, pdf.data)
        data = json.dumps(manifest, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
        write_spool_file(folder / f"{stem}.json", data)
        return pdf_path.relative_to(self.directory)


class SpoolLetterAdapter:
    """``SpoolLetterAdapter(settings, renderer=None)``: one PDF and one manifest per notice."""

    channel: ClassVar[Channel] = "letter"
    name = "spool"
    max_body_chars: ClassVar[int | None] = None
    default_rate: ClassVar[str | None] = None

    def __init__(self, settings: Settings, *, renderer: PdfRenderer | None = None) -> None:
        if settings.letter_spool_dir is None:
            raise ValueError("set DUNNING_LETTER_SPOOL_DIR")
        self.spool = LetterSpool(settings.letter_spool_dir)
        self.renderer = renderer or renderer_for(settings)

    async def send(self, notice: RenderedNotice) -> Receipt:
        pdf = await self.renderer.render_notice(notice)
        try:
            written = await asyncio.to_thread(self.spool.write, notice, pdf)
        except OSError as exc:  # disk full, spool not mounted: an operator fixes it, letters wait
            code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise TransientDeliveryError("spool_write_failed", code) from None
        return Receipt(provider=self.name, provider_id=written.as_posix())

    async def startup_problems(self) -> list[tuple[str, str]]:
        return await renderer_problems(self.renderer)

    async def aclose(self) -> None:
        await self.renderer.aclose()


def renderer_for(settings: Settings) -> PdfRenderer:
    """The PDF renderer the settings ask for; relative URLs in letters resolve in the templates."""
    base_url = settings.templates_dir.resolve().as_uri() + "/"
    return PdfRenderer(settings.letter_processes, base_url=base_url,
                       timeout_s=settings.letter_render_timeout_s)
