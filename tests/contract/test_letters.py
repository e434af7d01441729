"""Letters: real WeasyPrint in real render processes, real fonts, read back with poppler; the
spool on a temporary directory and the print-and-mail API against its test double.

The render processes are started once per test session (``pdf_pool`` in conftest.py) and
shared by every renderer; each test still gets its own adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.bootstrap import build_adapters
from service.channels.base import (
    PermanentDeliveryError,
    TransientDeliveryError,
)
from service.channels.letter import SpoolLetterAdapter, health_problems
from service.channels.pdf import PdfRenderer, RendererHealth
from service.channels.printmail import PrintMailLetterAdapter
from service.config import Settings
from tests.contract import test_channel_adapters as shared
from tests.contract.test_channel_adapters import Harness
from tests.helpers.notices import (
    TEMPLATES_URL,
    no_font_has,
    pdf_text,
    poppler,
    rendered_notice,
    sample_event,
    us_event,
)
from tests.helpers.printmail_double import PrintMailDouble

MM = 72 / 25.4  # points per millimetre
INCH = 72.0
# where the recipient must be readable: DIN 5008 B on A4, the #10 window on US Letter
A4_WINDOW_PT = (20 * MM, 45 * MM, 85 * MM, 45 * MM)
LETTER_WINDOW_PT = (0.875 * INCH, 2.05 * INCH, 3.5 * INCH, 0.875 * INCH)
CN_M3 = "escalated_m3_letter_cn.json"


@pytest.fixture
async def spool(tmp_path: Path, renderer: PdfRenderer) -> AsyncIterator[SpoolLetterAdapter]:
    adapter = SpoolLetterAdapter(Settings(letter_spool_dir=tmp_path / "spool"), renderer=renderer)
    yield adapter
    await adapter.aclose()


def letters_in(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.pdf"))


# -- the shared channel adapter contract, run against both letter adapters --------------------
@pytest.fixture(params=["spool_letter", "printmail"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path,
                  renderer: PdfRenderer) -> AsyncIterator[Harness]:
    if request.param == "spool_letter":
        folder = tmp_path / "spool"
        adapter: Any = SpoolLetterAdapter(Settings(letter_spool_dir=folder), renderer=renderer)
        yield Harness(adapter, "spool", "letter", "北京市朝阳区", lambda: letters_in(folder))
        await adapter.aclose()
        return
    async with PrintMailDouble() as double:
        settings = Settings(printmail_url=double.base_url, printmail_api_key=double.api_key,
                            printmail_from="adr_return_address")
        adapter = PrintMailLetterAdapter(settings, renderer=renderer)
        yield Harness(adapter, "printmail", "letter", "北京市朝阳区",
                      lambda: [letter.id for letter in double.letters])
        await adapter.aclose()


test_every_adapter_meets_the_channel_adapter_protocol = (
    shared.test_every_adapter_meets_the_channel_adapter_protocol)
test_a_notice_is_delivered_once_and_the_receipt_names_the_provider = (
    shared.test_a_notice_is_delivered_once_and_the_receipt_names_the_provider)
test_a_resent_notice_is_recognisably_the_same_notice = (
    shared.test_a_resent_notice_is_recognisably_the_same_notice)
test_two_notices_are_two_distinct_deliveries = shared.test_two_notices_are_two_distinct_deliveries
test_closing_an_adapter_twice_is_harmless = shared.test_closing_an_adapter_twice_is_harmless


# -- the PDF -----------------------------------------------------------------------------------
async def test_the_cn_m3_letter_is_an_a4_pdf_with_name_amount_and_address(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    receipt = await spool.send(rendered_notice(sample_event(CN_M3), "cn_m3", "letter"))
    pdf = tmp_path / "spool" / receipt.provider_id
    text = pdf_text(pdf)
    for expected in ("李娜", "9,120.55", "浦东新区世纪大道100号", "200120", "信用卡逾期催收函",
                     "8876", "400-820-0000"):
        assert expected in text, expected
    assert "A4" in poppler("pdfinfo", str(pdf))


async def test_the_chinese_font_is_embedded_as_a_subset(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    receipt = await spool.send(rendered_notice(sample_event(CN_M3), "cn_m3", "letter"))
    fonts = poppler("pdffonts", str(tmp_path / "spool" / receipt.provider_id)).splitlines()[2:]
    cjk = [line.split() for line in fonts if "CJK" in line]
    assert cjk, fonts
    assert all(row[-5:-3] == ["yes", "yes"] for row in cjk), fonts  # embedded, subset
    assert any("Bold" in row[0] for row in cjk)  # headings in a real bold, not a smeared one


async def test_the_recipient_shows_in_the_envelope_window_on_page_one_only(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    cn = await spool.send(rendered_notice(sample_event(CN_M3), "cn_m3", "letter", notice_id="a"))
    window = pdf_text(tmp_path / "spool" / cn.provider_id, page=1, window_pt=A4_WINDOW_PT)
    assert ["200120", "上海市", "浦东新区世纪大道100号", "21楼", "李娜 收"] == [
        line.strip() for line in window.splitlines() if line.strip()][1:]  # after the return line
    us = await spool.send(rendered_notice(us_event("late"), "us_late", "letter", notice_id="b"))
    window = pdf_text(tmp_path / "spool" / us.provider_id, page=1, window_pt=LETTER_WINDOW_PT)
    assert [line.strip() for line in window.splitlines() if line.strip()] == [
        "Maria Gonzalez", "1600 Pennsylvania Ave NW", "Washington, DC 20500"]


async def test_a_us_letter_is_printed_on_us_letter_in_english(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    receipt = await spool.send(rendered_notice(us_event("late"), "us_late", "letter"))
    pdf = tmp_path / "spool" / receipt.provider_id
    assert "612 x 792 pts (letter)" in poppler("pdfinfo", str(pdf))
    text = pdf_text(pdf)
    assert "Seriously Past Due" in text and "$3,120.44" in text and "0042" in text
    manifest = json.loads(pdf.with_suffix(".json").read_text(encoding="utf-8"))
    assert (manifest["paper"], manifest["locale"]) == ("Letter", "en-US")


async def test_every_page_carries_the_reference_and_page_n_of_m(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    notice = rendered_notice(sample_event(CN_M3), "cn_m3", "letter", notice_id="evt-cn-0002.0")
    pdf = tmp_path / "spool" / (await spool.send(notice)).provider_id
    pages = json.loads(pdf.with_suffix(".json").read_text(encoding="utf-8"))["pages"]
    assert pages >= 2
    for page in range(1, pages + 1):
        text = "".join(pdf_text(pdf, page=page).split())  # pdftotext drops spaces in Chinese
        assert "编号evt-cn-0002.0" in text and f"第{page}页/共{pages}页" in text


async def test_the_us_validation_notice_shows_the_itemization_from_the_context(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    notice = rendered_notice(us_event("recovery"), "us_recovery", "letter")
    text = pdf_text(tmp_path / "spool" / (await spool.send(notice)).provider_id)
    for expected in ("is a debt collector", "June 30, 2026", "$3,000.00", "+ $95.44",
                     "+ $25.00", "$3,120.44", "January 29, 2027", "How do you want to respond?"):
        assert expected in text, expected


# -- fonts: fallback, and no empty boxes -------------------------------------------------------
async def test_a_rare_character_in_a_name_prints_from_a_fallback_font(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    event = sample_event(CN_M3, debtor={"name": "李𠮷"})  # U+20BB7, outside the common set
    receipt = await spool.send(rendered_notice(event, "cn_m3", "letter"))
    assert "李𠮷 收" in pdf_text(tmp_path / "spool" / receipt.provider_id)


async def test_a_letter_with_a_character_no_font_has_is_refused_not_printed_with_a_box(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    missing = no_font_has("\U0002a6d6", "\u0378", "\U000e01f0")
    assert missing is not None, "every candidate character has a font here"
    event = sample_event(CN_M3, debtor={"name": f"李{missing}"})
    with pytest.raises(PermanentDeliveryError) as caught:
        await spool.send(rendered_notice(event, "cn_m3", "letter"))
    assert caught.value.reason == "letter_missing_glyphs"
    assert f"U+{ord(missing):04X}" in caught.value.detail
    assert letters_in(tmp_path / "spool") == []


async def test_the_renderer_reports_font_subsetting_and_a_chinese_font(
        renderer: PdfRenderer) -> None:
    health = await renderer.health()
    assert health.font_subsetting and health.cjk_font


# -- the spool ---------------------------------------------------------------------------------
async def test_the_spool_holds_the_pdf_and_a_manifest_with_its_checksum(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    claimed = datetime(2026, 12, 20, 2, 0, tzinfo=UTC)
    notice = rendered_notice(sample_event(CN_M3), "cn_m3", "letter",
                             notice_id="evt-cn-0002.0", claimed_at=claimed)
    receipt = await spool.send(notice)
    assert (receipt.provider, receipt.provider_id) == ("spool", "2026-12-20/evt-cn-0002.0.pdf")
    folder = tmp_path / "spool" / "2026-12-20"
    assert sorted(p.name for p in folder.iterdir()) == ["evt-cn-0002.0.json", "evt-cn-0002.0.pdf"]
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o640}
    pdf = (folder / "evt-cn-0002.0.pdf").read_bytes()
    manifest = json.loads((folder / "evt-cn-0002.0.json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(pdf).hexdigest() and manifest["bytes"] == len(pdf)
    assert (manifest["template"], manifest["locale"], manifest["paper"]) == ("cn_m3", "zh-CN", "A4")
    assert manifest["pages"] == int(poppler("pdfinfo", str(folder / "evt-cn-0002.0.pdf"))
                                    .split("Pages:")[1].split()[0])
    assert manifest["recipient"]["address"]["postal_code"] == "200120"
    assert manifest["recipient"]["name"] == "李娜"
    assert manifest["sender"]["name"] == "示例银行信用卡中心"


async def test_a_retry_after_midnight_rewrites_the_first_days_letter(
        spool: SpoolLetterAdapter, tmp_path: Path) -> None:
    first = datetime(2026, 12, 20, 23, 59, tzinfo=UTC)
    notice = rendered_notice(sample_event(CN_M3), "cn_m3", "letter", claimed_at=first)
    await spool.send(notice)
    again = await spool.send(replace(notice, attempt=2, claimed_at=first + timedelta(hours=1)))
    assert again.provider_id.startswith("2026-12-20/")
    assert letters_in(tmp_path / "spool") == ["2026-12-20/evt-test.0.pdf"]
    manifest = json.loads((tmp_path / "spool" / "2026-12-20" / "evt-test.0.json").read_text())
    assert manifest["attempt"] == 2


async def test_a_spool_that_cannot_be_written_keeps_the_letter_for_a_retry(
        renderer: PdfRenderer, tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    adapter = SpoolLetterAdapter(Settings(letter_spool_dir=tmp_path / "not-a-directory" / "spool"),
                                 renderer=renderer)
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(rendered_notice(sample_event(CN_M3), "cn_m3", "letter"))
    assert (caught.value.reason, caught.value.detail) == ("spool_write_failed", "ENOTDIR")


async def test_the_event_loop_runs_while_a_letter_renders(spool: SpoolLetterAdapter) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    await spool.send(rendered_notice(sample_event(CN_M3), "cn_m3", "letter"))
    ticker.cancel()
    assert ticks > before  # a render on the loop would have kept the ticker from running


async def test_a_render_over_its_time_limit_is_retried_later(
        pdf_pool: ProcessPoolExecutor) -> None:
    hasty = PdfRenderer(1, base_url=TEMPLATES_URL, timeout_s=0.001, executor=pdf_pool)
    notice = rendered_notice(sample_event(CN_M3), "cn_m3", "letter")
    with pytest.raises(TransientDeliveryError) as caught:
        await hasty.render_notice(notice)
    assert caught.value.reason == "letter_render_timeout"


async def test_a_render_process_that_dies_is_replaced_and_the_letter_retried_later() -> None:
    before = set(multiprocessing.active_children())
    renderer = PdfRenderer(1, base_url=TEMPLATES_URL)  # its own pool: this test breaks it
    notice = rendered_notice(sample_event(CN_M3), "cn_m3", "letter")
    try:
        await renderer.health()
        (process,) = set(multiprocessing.active_children()) - before
        rendering = asyncio.create_task(renderer.render_notice(notice))
        await asyncio.sleep(0.05)
        process.kill()  # as the kernel's out-of-memory killer would
        with pytest.raises(TransientDeliveryError) as caught:
            await rendering
        assert caught.value.reason == "letter_renderer_crashed"
        assert (await renderer.render_notice(notice)).pages >= 1
    finally:
        await renderer.aclose()


# -- start-up and wiring --------------------------------------------------------------------------
def test_a_worker_without_font_subsetting_or_a_chinese_font_is_told_at_start() -> None:
    assert health_problems(RendererHealth(font_subsetting=True, cjk_font=True)) == []
    codes = [code for code, _ in health_problems(RendererHealth(False, False))]
    assert codes == ["letter_font_subsetting_unavailable", "letter_cjk_font_missing"]
    assert "libharfbuzz-subset0" in health_problems(RendererHealth(False, True))[0][1]


@pytest.mark.parametrize(("values", "provider"), [
    ({}, "outbox"),
    ({"letter_spool_dir": "spool"}, "spool"),
    ({"letter_spool_dir": "spool", "printmail_url": "http://127.0.0.1:9",
      "printmail_api_key": "k"}, "printmail"),
])
async def test_settings_choose_where_letters_go(values: dict[str, str], provider: str,
                                                tmp_path: Path) -> None:
    adapters = build_adapters(Settings(outbox_dir=tmp_path, **values))  # type: ignore[arg-type]
    try:
        assert adapters["letter"].name == provider
    finally:
        for adapter in adapters.values():
            await adapter.aclose()
