"""Letters through a print-and-mail API, in the shape of Lob's ``POST /v1/letters``.

The PDF is rendered here (the same :class:`~service.channels.pdf.PdfRenderer` as the
spool) and uploaded as ``multipart/form-data`` with the recipient and return addresses
(``to[...]``, ``from[...]``), ``color``, ``use_type`` and the notice's id in ``metadata``.
The API key is the user name of HTTP Basic authentication.

Every request carries ``Idempotency-Key: <notice_id>``: the provider answers a repeated key
with the letter it already made, so a request that may have arrived is simply sent again
(a retry through the ledger, or after a crash), never an unknown outcome, and never a second
letter. Our PDF places the address for a window envelope itself, which need not match the
provider's reserved address zone, so the provider is asked to add its address page in front
(``address_placement=insert_blank_page``) rather than print over the letter.

Error texts from the provider may quote the address: they never go into error details.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import ClassVar

import aiohttp

from service.channels.base import (
    Address,
    Channel,
    DeliveryError,
    PermanentDeliveryError,
    Receipt,
    RenderedNotice,
    TransientDeliveryError,
)
from service.channels.letter import renderer_for, renderer_problems
from service.channels.pdf import Pdf, PdfRenderer
from service.channels.twilio_client import parse_retry_after
from service.config import Settings

LETTERS_PATH = "/v1/letters"
LETTER_OPTIONS = {
    "color": "false",  # collection letters are black and white
    "double_sided": "false",  # one sheet per page: the tear-off form has nothing on its back
    "address_placement": "insert_blank_page",
    "use_type": "operational",  # a notice about an account, not marketing
}


def address_fields(prefix: str, name: str, address: Address) -> dict[str, str]:
    """``to[name]``, ``to[address_line1]``, … of one postal address; empty parts left out."""
    lines = [line for line in address.lines if line.strip()]
    values = {
        "name": name,
        "address_line1": lines[0] if lines else "",
        "address_line2": ", ".join(lines[1:]),
        "address_city": address.city or "",
        "address_state": address.region or "",
        "address_zip": address.postal_code or "",
        "address_country": address.country or "",
    }
    return {f"{prefix}[{key}]": value for key, value in values.items() if value}


def letter_form(notice: RenderedNotice, pdf: Pdf, from_id: str | None) -> aiohttp.FormData:
    """The multipart body of ``POST /v1/letters`` for one notice."""
    if notice.address is None:
        raise PermanentDeliveryError("no_postal_address")
    form = aiohttp.FormData()
    form.add_field("description", f"{notice.template} {notice.locale}")
    for key, value in address_fields("to", notice.recipient_name, notice.address).items():
        form.add_field(key, value)
    if from_id:
        form.add_field("from", from_id)
    elif notice.sender.get("name") and notice.sender.get("address"):
        form.add_field("from[name]", notice.sender["name"])
        form.add_field("from[address_line1]", notice.sender["address"])
    else:
        raise PermanentDeliveryError("no_return_address", "set DUNNING_PRINTMAIL_FROM or the "
                                     "ladder's sender name and address in policy.yaml")
    for key, value in LETTER_OPTIONS.items():
        form.add_field(key, value)
    form.add_field("metadata[notice_id]", notice.notice_id)
    form.add_field("file", pdf.data, filename="letter.pdf", content_type="application/pdf")
    return form


def classify_response(status: int, body: bytes, retry_after: str | None) -> Receipt | DeliveryError:
    """The provider's answer: a receipt, or what the dispatcher must do about it."""
    reason, detail = f"printmail_{status}", f"HTTP {status}"
    if 200 <= status < 300:
        try:
            letter_id = json.loads(body).get("id")
        except (ValueError, AttributeError):
            letter_id = None
        if isinstance(letter_id, str) and letter_id:
            return Receipt(provider=PrintMailLetterAdapter.name, provider_id=letter_id)
        # accepted, but we cannot read which letter: asking again with the same key tells us
        return TransientDeliveryError("printmail_bad_response", detail)
    if status == 429 or status >= 500:
        return TransientDeliveryError(reason, detail, parse_retry_after(retry_after))
    if status in (401, 403):  # credentials or account: an operator can fix it, letters wait
        return TransientDeliveryError(reason, detail)
    return PermanentDeliveryError(reason, detail)


class PrintMailLetterAdapter:
    """``PrintMailLetterAdapter(settings, renderer=None)``: one letter per notice, idempotently."""

    channel: ClassVar[Channel] = "letter"
    name = "printmail"
    max_body_chars: ClassVar[int | None] = None
    default_rate: ClassVar[str | None] = None

    def __init__(self, settings: Settings, *, renderer: PdfRenderer | None = None) -> None:
        if not (settings.printmail_url and settings.printmail_api_key):
            raise ValueError("set DUNNING_PRINTMAIL_URL and DUNNING_PRINTMAIL_API_KEY")
        self._endpoint = settings.printmail_url.rstrip("/") + LETTERS_PATH
        token = base64.b64encode(f"{settings.printmail_api_key}:".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._from_id = settings.printmail_from
        self._timeout_s = settings.provider_timeout_s
        self.renderer = renderer or renderer_for(settings)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, notice: RenderedNotice) -> Receipt:
        pdf = await self.renderer.render_notice(notice)
        form = letter_form(notice, pdf, self._from_id)
        headers = {"Authorization": self._authorization, "Idempotency-Key": notice.notice_id,
                   "Accept": "application/json"}
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client().post(self._endpoint, data=form, headers=headers,
                                               allow_redirects=False) as response:
                    body = await response.read()
        except TimeoutError:
            raise TransientDeliveryError("printmail_timeout", "no answer; the same "
                                         "Idempotency-Key makes sending again safe") from None
        except aiohttp.ClientError as exc:
            raise TransientDeliveryError("printmail_connection", type(exc).__name__) from None
        answer = classify_response(response.status, body, response.headers.get("Retry-After"))
        if isinstance(answer, DeliveryError):
            raise answer
        return answer

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def startup_problems(self) -> list[tuple[str, str]]:
        return await renderer_problems(self.renderer)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self.renderer.aclose()
