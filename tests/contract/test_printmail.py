"""Letters through the print-and-mail API (Lob's shape) against its test double, with real PDFs.

The shared channel adapter contract runs against this adapter in ``test_letters.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from service.channels.base import Address, PermanentDeliveryError, TransientDeliveryError
from service.channels.pdf import PdfRenderer
from service.channels.printmail import PrintMailLetterAdapter
from service.config import Settings
from tests.helpers.notices import rendered_notice, us_event
from tests.helpers.printmail_double import PrintMailDouble

Api = tuple[PrintMailLetterAdapter, PrintMailDouble]


@pytest.fixture
async def printmail(renderer: PdfRenderer) -> AsyncIterator[Api]:
    async with PrintMailDouble() as double:
        settings = Settings(printmail_url=double.base_url, printmail_api_key=double.api_key,
                            provider_timeout_s=5.0)
        adapter = PrintMailLetterAdapter(settings, renderer=renderer)
        yield adapter, double
        await adapter.aclose()


async def test_printmail_uploads_the_pdf_with_both_addresses_and_the_notice_id_as_key(
        printmail: Api) -> None:
    adapter, double = printmail
    receipt = await adapter.send(rendered_notice(us_event("late"), "us_late", "letter",
                                                 notice_id="evt-us-late.0"))
    (letter,) = double.letters
    assert (receipt.provider, receipt.provider_id) == ("printmail", letter.id)
    assert letter.idempotency_key == "evt-us-late.0"
    assert letter.pdf.startswith(b"%PDF-")
    assert letter.fields["to[name]"] == "Maria Gonzalez"
    assert (letter.fields["to[address_state]"], letter.fields["to[address_zip]"],
            letter.fields["to[address_country]"]) == ("DC", "20500", "US")
    assert (letter.fields["from[name]"], letter.fields["from[address_line1]"]) == (
        "Example Bank", "PO Box 15550, Wilmington, DE 19850-5550")
    assert letter.fields["metadata[notice_id]"] == "evt-us-late.0"
    assert (letter.fields["use_type"], letter.fields["color"]) == ("operational", "false")


async def test_printmail_after_a_timeout_sending_again_finds_the_first_letter(
        renderer: PdfRenderer) -> None:
    async with PrintMailDouble() as double:
        settings = Settings(printmail_url=double.base_url, printmail_api_key=double.api_key,
                            provider_timeout_s=0.3)
        adapter = PrintMailLetterAdapter(settings, renderer=renderer)
        notice = rendered_notice(us_event("late"), "us_late", "letter")
        double.stall_next(1, 0.8)
        with pytest.raises(TransientDeliveryError) as caught:
            await adapter.send(notice)
        assert caught.value.reason == "printmail_timeout"
        receipt = await adapter.send(replace(notice, attempt=2))
        await adapter.aclose()
    assert [letter.id for letter in double.letters] == [receipt.provider_id]
    assert double.replays == 1


@pytest.mark.parametrize(("status", "error"), [(503, TransientDeliveryError),
                                               (429, TransientDeliveryError),
                                               (422, PermanentDeliveryError)])
async def test_printmail_errors_are_named_for_what_to_do_next(
        printmail: Api, status: int, error: type[Exception]) -> None:
    adapter, double = printmail
    double.fail_next(1, status, retry_after_s=7 if status == 429 else None)
    with pytest.raises(error) as caught:
        await adapter.send(rendered_notice(us_event("late"), "us_late", "letter"))
    assert getattr(caught.value, "reason", None) == f"printmail_{status}"
    if status == 429:
        assert getattr(caught.value, "retry_after_s", None) == 7
    assert double.letters == []


async def test_printmail_with_a_wrong_key_waits_for_an_operator(renderer: PdfRenderer) -> None:
    async with PrintMailDouble() as double:
        settings = Settings(printmail_url=double.base_url, printmail_api_key="wrong")
        adapter = PrintMailLetterAdapter(settings, renderer=renderer)
        with pytest.raises(TransientDeliveryError) as caught:
            await adapter.send(rendered_notice(us_event("late"), "us_late", "letter"))
        await adapter.aclose()
    assert caught.value.reason == "printmail_401" and double.letters == []


async def test_printmail_refuses_an_address_the_provider_cannot_take(printmail: Api) -> None:
    adapter, double = printmail
    notice = rendered_notice(us_event("late"), "us_late", "letter")
    notice = replace(notice, address=Address(("1600 Pennsylvania Ave NW",), "Washington"))
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(notice)
    assert caught.value.reason == "printmail_422"
    assert double.post_attempts == 1 and double.letters == []


async def test_printmail_without_a_return_address_sends_nothing(printmail: Api) -> None:
    adapter, double = printmail
    notice = replace(rendered_notice(us_event("late"), "us_late", "letter"), sender={})
    with pytest.raises(PermanentDeliveryError, match="no_return_address"):
        await adapter.send(notice)
    assert double.post_attempts == 0
