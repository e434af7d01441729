"""A real SMTP server for tests: aiosmtpd's ``Controller`` on 127.0.0.1, in its own thread.

It collects what it receives and can be told to misbehave: answer 4xx/5xx to the next N
messages, refuse a recipient with 550, stall after DATA, go down and come back on the same
port (an outage), and offer STARTTLS or implicit TLS with a given certificate.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    peer: tuple[str, int]  # the client's address: the same peer means a reused connection
    mail_options: tuple[str, ...] = ()  # the MAIL command's parameters, e.g. SIZE=1234


@dataclass(eq=False)
class _Handler:
    received: list[ReceivedMail] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> reply to RCPT
    data_replies: list[str] = field(default_factory=list)  # replies to the next DATA commands
    stall_data_s: float = 0.0
    data_attempts: int = 0  # every DATA command, answered with an error or not
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # aiosmtpd's hook names
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook names
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.stall_data_s:
            await asyncio.sleep(self.stall_data_s)
        with self.lock:
            self.data_attempts += 1
            reply = self.data_replies.pop(0) if self.data_replies else None
        if reply:
            return reply
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.received.append(
                ReceivedMail(
                    str(envelope.mail_from), tuple(envelope.rcpt_tos), raw, parsed,
                    _peer(session.peer), tuple(envelope.mail_options),
                )
            )
        return "250 Message accepted for delivery"


class _TrackedSMTP(SMTP):
    """aiosmtpd's SMTP session, registering its transports so a stop can drop them."""

    connections: set[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(transport)
        super().connection_made(transport)


class _Controller(Controller):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[asyncio.BaseTransport] = set()

    def factory(self) -> SMTP:
        server = _TrackedSMTP(self.handler, **self.SMTP_kwargs)
        server.connections = self.connections
        return server

    def drop_connections(self) -> None:
        """Abort every client connection (from the test thread), as a crash would."""

        async def drop() -> None:
            for transport in list(self.connections):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(drop(), self.loop).result(timeout=5)


def _peer(peer: object) -> tuple[str, int]:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return str(peer), 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SmtpTestServer:
    """``with SmtpTestServer() as smtp:`` then send to ``smtp.host``/``smtp.port``.

    ``tls="starttls"`` offers STARTTLS, ``tls="tls"`` speaks TLS from the first byte; both
    need ``cert_chain=(certfile, keyfile)``.
    """

    host = "127.0.0.1"

    def __init__(
        self, *, tls: str = "none", cert_chain: tuple[str, str] | None = None
    ) -> None:
        self.port = _free_port()
        self._handler = _Handler()
        self._tls = tls
        self._server_ctx: ssl.SSLContext | None = None
        if tls != "none":
            if cert_chain is None:
                raise ValueError("a TLS server needs cert_chain=(certfile, keyfile)")
            self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._server_ctx.load_cert_chain(*cert_chain)
        self._controller: _Controller | None = None

    # -- what arrived ------------------------------------------------------------------------
    @property
    def received(self) -> list[ReceivedMail]:
        with self._handler.lock:
            return list(self._handler.received)

    @property
    def data_attempts(self) -> int:
        with self._handler.lock:
            return self._handler.data_attempts

    # -- misbehaviour ------------------------------------------------------------------------
    def reply_to_next(self, n: int, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer the next ``n`` DATA commands with ``reply`` (e.g. ``"554 5.7.1 Spam"``)."""
        with self._handler.lock:
            self._handler.data_replies.extend([reply] * n)

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        self._handler.refuse[address.lower()] = reply

    def drop_connections(self) -> None:
        """Close every client connection from the server side; keep listening."""
        if self._controller is not None:
            self._controller.drop_connections()

    def stall_data(self, seconds: float) -> None:
        """Wait ``seconds`` after the message body before answering (0 = answer at once)."""
        self._handler.stall_data_s = seconds

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Start (again) on the same port."""
        if self._controller is not None:
            return
        options: dict[str, Any] = {}
        if self._tls == "starttls":
            options = {"tls_context": self._server_ctx, "require_starttls": True}
        elif self._tls == "tls":
            options = {"ssl_context": self._server_ctx}
        controller = _Controller(
            self._handler, hostname=self.host, port=self.port, ready_timeout=10, **options
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening; open connections are dropped (an outage)."""
        if self._controller is not None:
            self._controller.drop_connections()
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
