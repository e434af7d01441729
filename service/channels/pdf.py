"""Letters as PDF: WeasyPrint in a pool of processes, never on the event loop.

WeasyPrint is CPU-bound (~120-240 ms a page here with font subsetting, 13-24 s a letter without
``libharfbuzz-subset0``), so :class:`PdfRenderer` runs :func:`render_pdf` in a
``ProcessPoolExecutor`` of ``DUNNING_LETTER_PROCESSES`` processes:

- processes are started with ``spawn`` (a fork of a process that runs threads and an event
  loop can deadlock; so a script that uses the pool needs ``if __name__ == "__main__":``, as
  ``dunning`` and ``python -m service`` have), run at the lowest CPU priority
  (``PROCESS_NICENESS``) so the event loop and the SMS keep their CPU, are deaf to SIGINT (the
  worker decides when they stop), and render a probe letter first to load WeasyPrint and the
  fonts before the first real letter;
- at most ``max_processes`` letters are in the pool at once; more wait in the event loop;
- the page size is the one the template's ``@page`` rule asks for (the layout's ``page_size``
  block: A4 on the CN ladder, US Letter on the US ladder), read back from the rendered page;
- a character that no installed font can show would print as an empty box. WeasyPrint logs
  each one; :func:`render_pdf` collects them and the letter adapters refuse such a letter
  (fontconfig falls back through every installed font first, so only a character that no
  font at all covers ends up here);
- only ``file:`` and ``data:`` URLs are fetched: a template cannot make the renderer wait on
  the network.

WeasyPrint is imported in the render processes only (and by ``dunning render -o``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from service.channels.base import PermanentDeliveryError, RenderedNotice, TransientDeliveryError

T = TypeVar("T")

PROCESS_NICENESS = 19  # the lowest priority: render processes get the CPU others leave over
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends
MM_PER_CSS_PX = 25.4 / 96
PAPER_SIZES_MM = {"A4": (210.0, 297.0), "Letter": (215.9, 279.4)}
PAPER_TOLERANCE_MM = 1.0
ALLOWED_URL_SCHEMES = ("file", "data")  # images and stylesheets beside the templates
URL_TIMEOUT_S = 5.0
# A few CJK characters, rendered at start: warms a process up and shows whether a CJK font exists.
PROBE_HTML = ('<html lang="zh-CN"><body style="font-family: \'Noto Serif CJK SC\', serif">'
              "催收函 <b>李娜</b> ¥9,120.55</body></html>")
_NOTDEF = ".notdef glyph"  # the start of WeasyPrint's warning for a character no font has


@dataclass(frozen=True, slots=True)
class Pdf:
    """One rendered letter."""

    data: bytes
    pages: int
    paper: str  # "A4", "Letter", or "<width>x<height>mm" for any other size
    missing_glyphs: tuple[str, ...] = ()  # "U+2A6D6", …: characters no installed font has


@dataclass(frozen=True, slots=True)
class RendererHealth:
    """What a render process found at start."""

    font_subsetting: bool  # libharfbuzz-subset is there (else ~100x slower letters)
    cjk_font: bool  # Chinese text renders with a real font


def paper_name(width_px: float, height_px: float) -> str:
    """The paper of a page given in CSS pixels: ``A4``, ``Letter`` or ``<w>x<h>mm``."""
    width, height = width_px * MM_PER_CSS_PX, height_px * MM_PER_CSS_PX
    for name, (w, h) in PAPER_SIZES_MM.items():
        if abs(width - w) <= PAPER_TOLERANCE_MM and abs(height - h) <= PAPER_TOLERANCE_MM:
            return name
    return f"{width:.0f}x{height:.0f}mm"


class _MissingGlyphs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.found: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args  # (character, code point)
        if str(record.msg).startswith(_NOTDEF) and isinstance(args, tuple) and len(args) == 2:
            codepoint = args[1]
            self.found[f"U+{codepoint:04X}" if isinstance(codepoint, int) else "U+?"] = None


@contextmanager
def _collecting_missing_glyphs() -> Iterator[_MissingGlyphs]:
    handler = _MissingGlyphs()
    logger = logging.getLogger("weasyprint")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def render_pdf(html: str, base_url: str | None = None) -> Pdf:
    """Render one letter (blocking, CPU-bound: run it in a render process)."""
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols=ALLOWED_URL_SCHEMES, timeout=URL_TIMEOUT_S)
    with _collecting_missing_glyphs() as missing:
        document = HTML(string=html, base_url=base_url, url_fetcher=fetcher).render()
        data = document.write_pdf()
    first = document.pages[0]
    return Pdf(data, len(document.pages), paper_name(first.width, first.height),
               tuple(missing.found))


def check_health() -> RendererHealth:
    """Run in a render process: is font subsetting available, is there a CJK font?"""
    from weasyprint.text.ffi import harfbuzz, harfbuzz_subset

    subsetting = harfbuzz_subset is not None and bool(harfbuzz.hb_version_atleast(4, 1, 0))
    return RendererHealth(subsetting, not render_pdf(PROBE_HTML).missing_glyphs)


def _die_with(parent: int) -> None:
    """End this render process when the worker that started it ends, even by SIGKILL.

    Linux only (``PR_SET_PDEATHSIG``, tied to the thread that started the process: the
    event loop's); elsewhere a killed worker's render processes stay until they are ended.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the worker died before the signal was asked for
        os._exit(0)


def _start_process(parent: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(PROCESS_NICENESS)
    except OSError:  # not permitted here: render at normal priority
        pass
    render_pdf(PROBE_HTML)  # imports WeasyPrint and loads the fonts before the first letter


def render_pool(max_processes: int) -> ProcessPoolExecutor:
    """A pool of render processes (started on first use, ``spawn``, niced, deaf to SIGINT,
    ended with the worker)."""
    return ProcessPoolExecutor(max_processes, initializer=_start_process,
                               initargs=(os.getpid(),),
                               mp_context=multiprocessing.get_context("spawn"))


class PdfRenderer:
    """``PdfRenderer(max_processes, base_url=None, timeout_s=120)``; ``await render(html)``.

    ``executor``: a pool to use instead of starting one (it is then not shut down by
    :meth:`aclose`); tests share one pool between many renderers.
    """

    def __init__(self, max_processes: int = 2, *, base_url: str | None = None,
                 timeout_s: float = 120.0, executor: ProcessPoolExecutor | None = None) -> None:
        self.max_processes = max_processes
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._owned = executor is None
        self._executor = executor or self._new_executor()
        self._slots: asyncio.Semaphore | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        return render_pool(self.max_processes)

    async def render(self, html: str) -> Pdf:
        """The PDF of ``html``; raises a :class:`~service.channels.base.DeliveryError`."""
        try:
            return await self._run(render_pdf, html, self.base_url)
        except (TransientDeliveryError, PermanentDeliveryError):
            raise
        except Exception as exc:  # noqa: BLE001 - WeasyPrint failed on this HTML: it will again
            raise PermanentDeliveryError("letter_render_failed", type(exc).__name__) from None

    async def render_notice(self, notice: RenderedNotice) -> Pdf:
        """The letter of a notice, refused if it is empty or would print empty boxes."""
        html = notice.parts.get("html", "")
        if not html.strip():
            raise PermanentDeliveryError("empty_letter")
        pdf = await self.render(html)
        if pdf.missing_glyphs:
            raise PermanentDeliveryError("letter_missing_glyphs", " ".join(pdf.missing_glyphs))
        return pdf

    async def health(self) -> RendererHealth:
        """Start a render process and ask it what it found (also warms the pool up)."""
        return await self._run(check_health)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_processes)
        slots, executor = self._slots, self._executor
        await slots.acquire()
        try:
            done: asyncio.Future[T] = asyncio.wrap_future(executor.submit(function, *args))
        except Exception as exc:  # noqa: BLE001 - the slot goes back whatever went wrong
            slots.release()
            raise self._not_submitted(exc, executor) from None
        # The slot is free once the process is done, even if we stopped waiting before that.
        done.add_done_callback(lambda _: slots.release())
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(done)
        except TimeoutError:
            raise TransientDeliveryError("letter_render_timeout",
                                         f"no PDF after {self.timeout_s:g} s") from None
        except BrokenProcessPool:  # a render process died (killed, out of memory)
            self._replace(executor)
            raise TransientDeliveryError("letter_renderer_crashed") from None

    def _not_submitted(self, exc: Exception, executor: ProcessPoolExecutor) -> Exception:
        if isinstance(exc, BrokenProcessPool):
            self._replace(executor)
            return TransientDeliveryError("letter_renderer_crashed")
        if isinstance(exc, RuntimeError):  # the pool was shut down: the worker is stopping
            return TransientDeliveryError("letter_renderer_closed")
        return exc

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for a broken one (once, however many letters found it broken)."""
        if self._owned and self._executor is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    async def aclose(self) -> None:
        """Stop the render processes (waits for letters being rendered); idempotent."""
        if self._owned:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
