"""Twilio webhooks (CONTRACT.md §9): inbound SMS opt-outs and delivery status callbacks.

Every request's ``X-Twilio-Signature`` is checked against the public URL Twilio called
(``DUNNING_PUBLIC_URL`` plus the path); a bad or missing signature gets 403 and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from xml.etree import ElementTree

from aiohttp import web
from twilio.request_validator import RequestValidator

from service.ledger import SqlLedger
from service.ledger.contacts import record_delivery, record_opt_out
from service.logs import get_logger
from service.rules import phone_destination

log = get_logger("dunning.webhooks")
# CONTRACT.md §3: compared without case, spaces or punctuation ("opt out" is OPTOUT)
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
                           "OPTOUT", "退订"})
CONFIRM = {"zh": "您已退订，将不再收到本行的催收短信。如需帮助请致电客服。",
           "en": "You have been unsubscribed and will receive no more text messages from us."}


def is_opt_out(body: str) -> bool:
    return re.sub(r"[\W_]+", "", body).upper() in OPT_OUT_WORDS


def twiml_message(text: str | None) -> str:
    response = ElementTree.Element("Response")
    if text:
        ElementTree.SubElement(response, "Message").text = text
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(response, "unicode")


class TwilioWebhooks:
    def __init__(self, ledger: SqlLedger, auth_token: str | None, public_url: str,
                 now: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self.validator = RequestValidator(auth_token) if auth_token else None
        self.public_url = public_url.rstrip("/")
        self.now = now

    async def _verified_form(self, request: web.Request) -> dict[str, str] | None:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        url = self.public_url + request.path_qs
        if self.validator is None or not signature or not self.validator.validate(
                url, form, signature):
            log.warning("webhook_signature_rejected", path=request.path)
            return None
        return form

    async def inbound(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        if form is None:
            return web.Response(status=403, text="invalid signature")
        body = form.get("Body", "")
        phone = phone_destination(form.get("From"))
        reply = None
        if is_opt_out(body) and phone.value:
            await record_opt_out(self.ledger, "sms", phone.value,
                                 f"twilio:{form.get('MessageSid', '')}", self.now())
            reply = CONFIRM["zh" if re.search(r"[\u4e00-\u9fff]", body) else "en"]
            log.info("inbound_opt_out", message_sid=form.get("MessageSid"))
        return web.Response(text=twiml_message(reply), content_type="application/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = await self._verified_form(request)
        if form is None:
            return web.Response(status=403, text="invalid signature")
        sid = form.get("MessageSid") or form.get("CallSid") or ""
        status = form.get("MessageStatus") or form.get("CallStatus") or ""
        conversation = bool(form.get("CallSid")) and status == "completed"
        found = await record_delivery(self.ledger, sid, status, self.now(), conversation)
        log.info("delivery_status", provider_id=sid, status=status, known=found)
        return web.Response(status=200, text="")

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/twilio/inbound", self.inbound), web.post("/twilio/status", self.status)]
