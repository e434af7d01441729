"""Email through SMTP (aiosmtplib) on a small pool of long-lived connections.

One multipart/alternative message (text and HTML) per notice, with a ``Message-ID`` derived
from the notice id: a re-sent notice is recognisably the same message (CONTRACT.md §4).

Measured choices (PITFALLS.md): connections are kept open (a new one costs ~40 ms, a reused
one ~3 ms); TLS is set explicitly (``start_tls=None`` would silently send in plain text when
a server offers no STARTTLS); the message is built with the legacy ``email.mime`` classes
(about three times cheaper than ``EmailMessage``), with a boundary of its own (else the
generator compiles a regular expression for every message to pick one), flattened once here
without re-folding headers that need no folding (:data:`SMTP_POLICY`), the From setting
parsed once; the text parts are base64-encoded in one call (:func:`text_part`), not 57 bytes
at a time. What the adapter sends is those bytes written directly (:func:`message_bytes`,
without the message objects and the generator); the transaction is ``sendmail``'s without
its second pass over the message to size it (:meth:`_TrackedSMTP.send_flat`); the dict of
refused recipients it returns is checked, since a partial refusal raises nothing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from email.generator import BytesGenerator
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache
from typing import Any, ClassVar, cast

import aiosmtplib

from service.channels.base import (
    Channel,
    DeliveryError,
    PermanentDeliveryError,
    Receipt,
    RenderedNotice,
    TransientDeliveryError,
    UnknownOutcomeError,
    message_id_for,
)
from service.config import Settings

NOTICE_ID_HEADER = "X-Dunning-Notice-Id"
_QUOTES_ADDRESS = (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused, ValueError)


def _reject_line_breaks(*values: str) -> None:
    if any("\r" in value or "\n" in value for value in values):
        raise PermanentDeliveryError("header_injection", "CR or LF in a header value")


def _header(value: str) -> str:
    if value.isascii():
        return value
    # compat32 messages take a Header (RFC 2047 encoded words); typeshed only knows str
    return cast(str, Header(value, "utf-8"))


@lru_cache(maxsize=16)  # a setting: parsed once, not for every message
def sender_address(email_from: str) -> str:
    """The bare address of ``DUNNING_EMAIL_FROM`` (which may carry a display name)."""
    return parseaddr(email_from)[1] or email_from


@lru_cache(maxsize=16)
def message_domain(email_from: str) -> str:
    """The domain Message-IDs are made in: that of the From address."""
    return sender_address(email_from).rpartition("@")[2] or "localhost"


class _Compat32Unfolded(Compat32):
    """compat32 (as aiosmtplib flattens a legacy message), but a header that is short ASCII
    on one line is written as it is: compat32 re-folds every header through a ``Header``,
    which was half the cost of flattening a message."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if (isinstance(value, str) and value.isascii() and "\r" not in value
                and "\n" not in value and len(name) + len(value) + 2 <= 78):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


SMTP_POLICY = _Compat32Unfolded()
BASE64_LINE = 76  # characters of a base64 body line (RFC 2045), as ``MIMEText`` writes them


def text_part(body: str, subtype: str) -> MIMENonMultipart:
    """``MIMEText(body, subtype, "utf-8")``, the same headers and payload, made cheaper.

    ``MIMEText`` base64-encodes the body 57 bytes at a time through ``email.charset``; here
    it is one ``b64encode`` cut into lines of 76 characters, each ending in ``\\n``, which
    is exactly the payload ``MIMEText`` stores (a unit test compares the two).
    """
    part = MIMENonMultipart("text", subtype, charset="utf-8")
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(_base64_lines(body).decode("ascii"))
    return part


def flatten(message: MIMEMultipart) -> bytes:
    """The bytes of ``message`` as they go to the SMTP server (what :func:`message_bytes`
    writes directly)."""
    with io.BytesIO() as out:
        BytesGenerator(out, policy=SMTP_POLICY).flatten(message)
        return out.getvalue()


@lru_cache(maxsize=16)
def _from_header(email_from: str) -> str:
    name, address = parseaddr(email_from)
    return formataddr((name, address), charset="utf-8") if address else email_from


def _checked(notice: RenderedNotice, email_from: str) -> tuple[str, list[tuple[str, str]]]:
    """The subject and the (subtype, body) parts of an email notice, after the checks that
    refuse it (see :func:`build_message`)."""
    subject = notice.parts.get("subject", "")
    _reject_line_breaks(subject, notice.destination, notice.notice_id, email_from)
    bodies = [(kind, notice.parts[part]) for kind, part in (("plain", "text"), ("html", "html"))
              if notice.parts.get(part)]
    if not bodies:
        raise PermanentDeliveryError("empty_notice", "no text and no HTML part")
    return subject, bodies


def _headers(notice: RenderedNotice, email_from: str, subject: str,
             date: str) -> list[tuple[str, Any]]:
    """The message's own headers, after Content-Type and MIME-Version, in order."""
    return [("Subject", _header(subject)), ("From", _from_header(email_from)),
            ("To", notice.destination), ("Date", date),
            ("Message-ID", message_id_for(notice.notice_id, message_domain(email_from))),
            (NOTICE_ID_HEADER, notice.notice_id)]


def build_message(notice: RenderedNotice, email_from: str,
                  date: str | None = None) -> MIMEMultipart:
    """The MIME message of an email notice, as sent by SMTP and written by the outbox.

    ``date``: the Date header (now, by default). Raises :class:`PermanentDeliveryError`
    ``header_injection`` if a header value holds CR or LF, and ``empty_notice`` if there is
    neither a text nor an HTML part.
    """
    subject, bodies = _checked(notice, email_from)
    # every part is base64 (utf-8), which never holds "=_": the boundary cannot occur in it
    message = MIMEMultipart("alternative", boundary=f"=_{notice.notice_id}")
    for name, value in _headers(notice, email_from, subject, date or formatdate(usegmt=True)):
        message[name] = value
    for kind, body in bodies:
        message.attach(text_part(body, kind))
    return message


_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]+")  # a boundary of these needs no quoting rules
_PART_HEAD = {kind: (f'Content-Type: text/{kind}; charset="utf-8"\nMIME-Version: 1.0\n'
                     "Content-Transfer-Encoding: base64\n\n").encode("ascii")
              for kind in ("plain", "html")}


def message_bytes(notice: RenderedNotice, email_from: str, date: str | None = None) -> bytes:
    """``flatten(build_message(notice, email_from, date))``, the same bytes, written directly.

    Building the message objects and walking them with the generator cost about twice as
    much as writing the few lines they come to: the headers are folded by the same
    policy, and each part is its fixed headers and its base64 lines. A notice id that is
    not plain (letters, digits, ``.``, ``_``, ``-``) takes the generator's path.
    """
    if not _PLAIN_ID.fullmatch(notice.notice_id):
        return flatten(build_message(notice, email_from, date))
    subject, bodies = _checked(notice, email_from)
    fold = SMTP_POLICY.fold_binary
    boundary = f"=_{notice.notice_id}"
    out = [fold("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
           fold("MIME-Version", "1.0")]
    out += [fold(name, value) for name, value in _headers(notice, email_from, subject,
                                                          date or formatdate(usegmt=True))]
    out.append(b"\n")
    between = f"--{boundary}\n".encode("ascii")
    for index, (kind, body) in enumerate(bodies):
        out += [b"\n" + between if index else between, _PART_HEAD[kind], _base64_lines(body)]
    out.append(f"\n--{boundary}--\n".encode("ascii"))
    return b"".join(out)


def _base64_lines(body: str) -> bytes:
    """``body`` in UTF-8, base64-encoded in lines of 76 characters, each ending in ``\\n``:
    the payload :func:`text_part` stores, as bytes."""
    encoded = base64.b64encode(body.encode("utf-8"))
    return b"".join(encoded[i:i + BASE64_LINE] + b"\n"
                    for i in range(0, len(encoded), BASE64_LINE))


class _TrackedSMTP(aiosmtplib.SMTP):
    """An SMTP client that knows whether the current transaction got as far as DATA."""

    data_started = False

    async def data(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(*args, **kwargs)

    async def send_flat(self, sender: str, recipients: Sequence[str],
                        message: bytes) -> dict[str, aiosmtplib.SMTPResponse]:
        """``sendmail(sender, recipients, message)``: the same commands and the same result.

        A greeting if none was made, MAIL (with ``SIZE`` where the server offers it), RCPT
        for each recipient, DATA, and RSET after a refusal; the refused recipients come
        back as a dict, and :class:`aiosmtplib.SMTPRecipientsRefused` is raised if all are.
        Cheaper than ``sendmail``: the size is counted, where ``sendmail`` rewrites the line
        endings of a copy of the message to measure it, and each address is parsed by MAIL
        and RCPT only, not once more beforehand.
        """
        if self.is_ehlo_or_helo_needed:
            await self._greet()
        options = [f"SIZE={smtp_size(message)}"] if self.supports_extension("size") else []
        try:
            await self.mail(sender, options=options)
            refused: list[aiosmtplib.SMTPRecipientRefused] = []
            for recipient in recipients:
                try:
                    await self.rcpt(recipient)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append(exc)
            if len(refused) == len(recipients):
                raise aiosmtplib.SMTPRecipientsRefused(refused)
            await self.data(message)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            with suppress(ConnectionError, aiosmtplib.SMTPResponseException):
                await self.rset()
            raise
        return {exc.recipient: aiosmtplib.SMTPResponse(exc.code, exc.message)
                for exc in refused}

    async def _greet(self) -> None:
        """EHLO, or HELO where a server does not know EHLO (as ``sendmail`` greets)."""
        try:
            await self.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not self.is_connected:
                raise
            await self.helo()


def smtp_size(message: bytes) -> int:
    """The length of ``message`` as DATA sends it (RFC 1870): every line ending CRLF, and
    a CRLF at the end."""
    crlf = message.count(b"\r\n")
    size = len(message) + (message.count(b"\n") - crlf) + (message.count(b"\r") - crlf)
    return size if message.endswith((b"\r", b"\n")) else size + 2


def _cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _by_code(code: int, detail: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentDeliveryError(f"smtp_{code}", detail)
    return TransientDeliveryError(f"smtp_{code}", detail)


def classify_smtp_error(exc: Exception, *, data_started: bool) -> DeliveryError:
    """Map an aiosmtplib failure to what the dispatcher must do (see ``channels/base.py``)."""
    if isinstance(exc, DeliveryError):
        return exc
    if _cert_error(exc):
        return PermanentDeliveryError("smtp_tls_verify", "server certificate not trusted")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        code = exc.recipients[0].code if exc.recipients else 550
        return _by_code(code, "recipient refused")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, type(exc).__name__)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentDeliveryError("smtp_not_supported", str(exc))
    if isinstance(exc, ValueError):  # aiosmtplib's address check
        return PermanentDeliveryError("invalid_address", "not a deliverable address")
    kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
    if data_started:  # the server may have taken the message
        return UnknownOutcomeError(f"smtp_{kind}", "lost after DATA")
    return TransientDeliveryError(f"smtp_{kind}", type(exc).__name__)


class SmtpEmailAdapter:
    """``SmtpEmailAdapter(settings, archive_bcc=(), tls_context=None)``.

    ``archive_bcc``: addresses that get a blind copy of every notice (a compliance mailbox);
    a refusal of the debtor's address fails the notice even if a copy was accepted, while a
    refused archive copy does not (the debtor got the notice).
    """

    channel: ClassVar[Channel] = "email"
    name = "smtp"
    max_body_chars: ClassVar[int | None] = None
    default_rate: ClassVar[str | None] = None  # DUNNING_RATE_EMAIL sets one

    def __init__(
        self,
        settings: Settings,
        *,
        archive_bcc: Sequence[str] = (),
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not settings.smtp_host:
            raise ValueError("set DUNNING_SMTP_HOST (or leave email to the outbox)")
        _reject_line_breaks(settings.email_from, *archive_bcc)
        self._settings = settings
        self._tls_context = tls_context
        self._email_from = settings.email_from
        self._sender = sender_address(settings.email_from)
        self._bcc = tuple(archive_bcc)
        self._timeout_s = settings.provider_timeout_s
        self._clients = [self._new_client() for _ in range(settings.smtp_pool_size)]
        self._idle: asyncio.LifoQueue[_TrackedSMTP] = asyncio.LifoQueue()
        for client in self._clients:
            self._idle.put_nowait(client)

    def _new_client(self) -> _TrackedSMTP:
        s = self._settings
        return _TrackedSMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",  # never None: no silent plain text
            tls_context=self._tls_context,
            timeout=s.provider_timeout_s,
        )

    async def send(self, notice: RenderedNotice) -> Receipt:
        async with self._connection() as client:  # built once a connection is free
            refused = await self._transact(client, message_bytes(notice, self._email_from),
                                           [notice.destination, *self._bcc])
        for address, (code, _text) in refused.items():
            if address == notice.destination:
                raise _by_code(code, "recipient refused")
        return Receipt(provider=self.name, provider_id=message_id_for(
            notice.notice_id, message_domain(self._email_from)))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_TrackedSMTP]:
        client = await self._idle.get()  # waiting for a connection is not provider time
        try:
            yield client
        finally:
            self._idle.put_nowait(client)

    async def _transact(
        self, client: _TrackedSMTP, message: bytes, recipients: list[str]
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        client.data_started = False
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._send_reconnecting(client, message, recipients)
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError, DeliveryError) as exc:
            if not isinstance(exc, aiosmtplib.SMTPResponseException | DeliveryError):
                client.close()  # the session is in an unknown state: start afresh next time
            error = classify_smtp_error(exc, data_started=client.data_started)
            # A server's reply may quote the address: keep it out of logged tracebacks.
            raise error from (None if isinstance(exc, _QUOTES_ADDRESS) else exc)

    async def _send_reconnecting(
        self, client: _TrackedSMTP, message: bytes, recipients: list[str]
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send on the pooled connection; if it turns out dropped, reconnect once."""
        reused = client.is_connected
        if not reused:
            await self._connect(client)
        try:
            return await client.send_flat(self._sender, recipients, message)
        except aiosmtplib.SMTPServerDisconnected:
            if not reused or client.data_started:
                raise
        client.close()
        await self._connect(client)
        return await client.send_flat(self._sender, recipients, message)

    async def _connect(self, client: _TrackedSMTP) -> None:
        try:
            await client.connect()
        except aiosmtplib.SMTPException as exc:
            # aiosmtplib raises a bare SMTPException when STARTTLS was asked for and the
            # server does not offer it: never fall back to plain text.
            if type(exc) is aiosmtplib.SMTPException and self._settings.smtp_tls == "starttls":
                raise PermanentDeliveryError("smtp_starttls_unavailable", str(exc)) from exc
            raise

    async def aclose(self) -> None:
        for client in self._clients:
            if client.is_connected:
                try:
                    async with asyncio.timeout(min(self._timeout_s, 5.0)):
                        await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
