"""A Twilio REST test double on aiohttp that speaks the 2010-04-01 wire format.

Request fields, list filters and response shapes come from Twilio's own OpenAPI description
(``twilio_api_v2010.json`` of twilio-oai, Copyright (C) 2023 Twilio, Inc., MIT License: the
license text is in ``TWILIO_SPEC_LICENSE`` beside this file). ``twilio_spec_2010.json`` is the
small extract of it that this double reads.

The real Twilio silently ignores a parameter it does not know, so a misspelt
``StatusCalback`` would only fail in production. The double is stricter: an unknown form field
or query parameter gets 400 with code 20001, a missing required one its Twilio error code.

Deviations, on purpose: every message is reported ``sent`` (every call ``completed``) by the
list endpoints as soon as it was accepted, with ``date_sent`` / ``start_time`` = the time it
was received; the create response says ``queued`` like Twilio.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlencode

from aiohttp import BasicAuth, web

SPEC: dict[str, Any] = json.loads(
    Path(__file__).with_name("twilio_spec_2010.json").read_text(encoding="utf-8")
)
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
ERRORS = {  # Twilio error codes the double answers with
    20001: "Unknown parameter",
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21201: "No 'To' number is specified",
    21205: "Url parameter is required",
    21211: "The 'To' number is not a valid phone number",
    21213: "No 'From' number is specified",
    21408: "Permission to send an SMS has not been enabled for the region",
    21602: "Message body is required",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required",
    21604: "A 'To' phone number is required",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}
Kind = Literal["message", "call"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """One message or call the double accepted."""

    sid: str
    to: str
    from_: str
    body: str | None
    twiml: str | None
    url: str | None
    status_callback: str | None
    received_at: datetime
    form: dict[str, str]


@dataclass(slots=True)
class _Fault:
    status: int = 0
    code: int = 0
    retry_after_s: float | None = None
    stall_s: float = 0.0


def twilio_error(status: int, code: int, message: str | None = None) -> web.Response:
    """A response in Twilio's error shape."""
    body = {
        "code": code,
        "message": message or ERRORS.get(code, "Error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


class _Reject(Exception):
    def __init__(self, status: int, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.response = twilio_error(status, code, message)


@dataclass(eq=False)
class TwilioDouble:
    """``async with TwilioDouble() as twilio:``; point the SDK at ``twilio.base_url``."""

    account_sid: str = "AC" + "d0" * 16
    auth_token: str = "test-auth-token"
    invalid_numbers: set[str] = field(default_factory=set)  # To => 400 / 21211
    refused_numbers: dict[str, int] = field(default_factory=dict)  # To => 400 / that code
    messages: list[Accepted] = field(default_factory=list)
    calls: list[Accepted] = field(default_factory=list)
    post_attempts: int = 0  # every POST that reached the double, answered or not
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path_qs)
    _faults: dict[str, deque[_Fault]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1 (an ephemeral port at first; the same one after ``stop``)."""
        app = web.Application(middlewares=[self._count, self._authenticate, self._inject])
        routes: tuple[tuple[Kind, str], ...] = (("message", "Messages"), ("call", "Calls"))
        for kind, res in routes:
            path = f"/2010-04-01/Accounts/{{AccountSid}}/{res}.json"
            app.router.add_post(path, self._create_handler(kind))
            app.router.add_get(path, self._list_handler(kind))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)  # a restart keeps the port
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- fault injection ---------------------------------------------------------------------
    def fail_next(
        self,
        n: int,
        status: int = 503,
        *,
        code: int | None = None,
        retry_after_s: float | None = None,
        method: str = "POST",
    ) -> None:
        """Answer the next ``n`` requests of ``method`` with ``status`` and accept nothing."""
        default = {429: 20429, 500: 20500, 503: 20503}.get(status, status)
        fault = _Fault(status=status, code=code or default, retry_after_s=retry_after_s)
        self._faults.setdefault(method, deque()).extend(fault for _ in range(n))

    def stall_next(self, n: int, seconds: float, *, method: str = "POST") -> None:
        """Process the next ``n`` requests normally but answer only after ``seconds``."""
        self._faults.setdefault(method, deque()).extend(_Fault(stall_s=seconds) for _ in range(n))

    # -- middlewares -------------------------------------------------------------------------
    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.method == "POST":
            self.post_attempts += 1
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return twilio_error(401, 20003)
        path_sid = request.match_info.get("AccountSid", auth.login)
        if (auth.login, auth.password) != (self.account_sid, self.auth_token):
            return twilio_error(401, 20003)
        if path_sid != auth.login:
            return twilio_error(401, 20003)
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _inject(self, request: web.Request, handler: Any) -> web.StreamResponse:
        queue = self._faults.get(request.method)
        fault = queue.popleft() if queue else _Fault()
        if fault.status:
            response = twilio_error(fault.status, fault.code)
            if fault.retry_after_s is not None:
                response.headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return response
        result: web.StreamResponse = await handler(request)
        if fault.stall_s:
            try:
                await asyncio.wait_for(self._closing.wait(), fault.stall_s)
            except TimeoutError:
                pass
        return result

    async def _not_found(self, request: web.Request) -> web.Response:
        return twilio_error(404, 20404)

    # -- create ------------------------------------------------------------------------------
    def _create_handler(self, kind: Kind) -> Any:
        async def create(request: web.Request) -> web.Response:
            form = await request.post()
            fields = {key: str(value) for key, value in form.items()}
            try:
                record = self._accept(kind, list(form.keys()), fields)
            except _Reject as rejected:
                return rejected.response
            (self.messages if kind == "message" else self.calls).append(record)
            return web.json_response(self._resource(kind, record, listed=False), status=201)

        return create

    def _accept(self, kind: Kind, keys: list[str], form: dict[str, str]) -> Accepted:
        op = SPEC["operations"]["CreateMessage" if kind == "message" else "CreateCall"]
        unknown = sorted(set(keys) - set(op["properties"]))
        if unknown:
            raise _Reject(400, 20001, f"Unknown parameter: {', '.join(unknown)}")
        missing_code = {"To": 21604 if kind == "message" else 21201, "From": 21213}
        for name in op["required"]:
            if not form.get(name):
                raise _Reject(400, missing_code.get(name, 20001), f"{name} is required")
        self._check_content(kind, form)
        to = form["To"]
        if not E164.match(to) or to in self.invalid_numbers:
            raise _Reject(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in self.refused_numbers:
            raise _Reject(400, self.refused_numbers[to])
        prefix = "SM" if kind == "message" else "CA"
        return Accepted(
            sid=prefix + uuid.uuid4().hex,
            to=to,
            from_=form.get("From", ""),
            body=form.get("Body"),
            twiml=form.get("Twiml"),
            url=form.get("Url"),
            status_callback=form.get("StatusCallback"),
            received_at=datetime.now(UTC),  # exact: pacing is measured on it
            form=form,
        )

    @staticmethod
    def _check_content(kind: Kind, form: dict[str, str]) -> None:
        if kind == "message":
            if not (form.get("From") or form.get("MessagingServiceSid")):
                raise _Reject(400, 21603)
            if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
                raise _Reject(400, 21602)
        elif not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            raise _Reject(400, 21205)

    def _resource(self, kind: Kind, record: Accepted, *, listed: bool) -> dict[str, Any]:
        """The resource JSON: exactly the spec's property names, unknown values null."""
        res = "Messages" if kind == "message" else "Calls"
        uri = f"/2010-04-01/Accounts/{self.account_sid}/{res}/{record.sid}"
        created = format_datetime(record.received_at)
        values: dict[str, Any] = {
            "sid": record.sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "to": record.to,
            "from": record.from_,
            "direction": "outbound-api",
            "date_created": created,
            "date_updated": created,
            "price_unit": "USD",
            "uri": uri + ".json",
        }
        if kind == "message":
            values |= {"body": record.body, "num_segments": "1", "num_media": "0"}
            values |= {"status": "sent", "date_sent": created} if listed else {"status": "queued"}
            values["subresource_uris"] = {"media": f"{uri}/Media.json"}
        else:
            values |= {"to_formatted": record.to, "from_formatted": record.from_}
            values |= {"status": "completed", "start_time": created} if listed else {
                "status": "queued"
            }
            values["subresource_uris"] = {"notifications": f"{uri}/Notifications.json"}
        schema = SPEC["schemas"][f"api.v2010.account.{kind}"]["properties"]
        return {name: values.get(name) for name in schema}

    # -- list --------------------------------------------------------------------------------
    def _list_handler(self, kind: Kind) -> Any:
        async def list_(request: web.Request) -> web.Response:
            try:
                return web.json_response(self._page(kind, request))
            except _Reject as rejected:
                return rejected.response

        return list_

    def _page(self, kind: Kind, request: web.Request) -> dict[str, Any]:
        op = SPEC["operations"]["ListMessage" if kind == "message" else "ListCall"]
        query = {key: request.query[key] for key in request.query}
        unknown = sorted(set(query) - set(op["query"]))
        if unknown:
            raise _Reject(400, 20001, f"Unknown parameter: {', '.join(unknown)}")
        try:
            page_size = min(int(query.get("PageSize", 50)), 1000)
            page = int(query.get("Page", 0))
        except ValueError as exc:
            raise _Reject(400, 20001, "PageSize and Page are integers") from exc
        found = [r for r in (self.messages if kind == "message" else self.calls)
                 if self._matches(kind, r, query)]
        found.sort(key=lambda r: r.received_at, reverse=True)  # Twilio lists newest first
        chunk = found[page * page_size : (page + 1) * page_size]
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(number: int) -> str:
            qs = urlencode({**filters, "PageSize": page_size, "Page": number})
            return f"{request.path}?{qs}" + (f"&PageToken=PA{number}" if number else "")

        more = (page + 1) * page_size < len(found)
        body: dict[str, Any] = {
            op["list_key"]: [self._resource(kind, r, listed=True) for r in chunk],
            "end": page * page_size + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if more else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1) if page else None,
            "start": page * page_size,
            "uri": uri(page),
        }
        return {name: body.get(name) for name in op["page_properties"]}

    def _matches(self, kind: Kind, record: Accepted, query: dict[str, str]) -> bool:
        if "To" in query and record.to != query["To"]:
            return False
        if "From" in query and record.from_ != query["From"]:
            return False
        stamp = "DateSent" if kind == "message" else "StartTime"
        if kind == "call" and query.get("Status", "completed") != "completed":
            return False
        for suffix, test in (("", _eq), (">", _on_or_after), ("<", _on_or_before)):
            value = query.get(stamp + suffix)
            if value is not None and not test(record.received_at, _parse_when(value)):
                return False
        return True


def _parse_when(text: str) -> date | datetime:
    """A date filter: ``YYYY-MM-DD`` (compared by day), ISO 8601 or RFC 2822 (by instant)."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError) as exc:
            raise _Reject(400, 20001, f"Invalid date: {text}") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _eq(at: datetime, when: date | datetime) -> bool:
    return at.date() == when if not isinstance(when, datetime) else at == when


def _on_or_after(at: datetime, when: date | datetime) -> bool:
    return at.date() >= when if not isinstance(when, datetime) else at >= when


def _on_or_before(at: datetime, when: date | datetime) -> bool:
    return at.date() <= when if not isinstance(when, datetime) else at <= when


@contextmanager
def threaded_double(**options: Any) -> Iterator[TwilioDouble]:
    """The double on an event loop of its own, in a thread: what it records is not delayed by
    the test's own loop (for measuring the pacing of requests as they arrive)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="twilio-double", daemon=True)
    thread.start()

    async def make() -> TwilioDouble:
        double = TwilioDouble(**options)
        await double.start()
        return double

    double = asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)
    try:
        yield double
    finally:
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
