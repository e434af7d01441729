"""The Twilio SDK's async client, made safe for notices: no retries, a hard timeout, honest errors.

Shared by the SMS and voice adapters. What was checked against twilio 9.13 (and the Twilio
test double in ``tests/helpers``):

- ``AsyncTwilioHttpClient`` opens an aiohttp session in its constructor, so the client is
  created lazily, inside the running event loop, on the first call.
- The base URL: setting ``client.api.base_url`` redirects every ``api.twilio.com`` request,
  list pagination included (``next_page_uri`` is resolved against it). ``edge``/``region`` are
  cleared so ``TWILIO_EDGE``/``TWILIO_REGION`` in the environment cannot rewrite the host.
- Retries: ``max_retries=None`` means a plain aiohttp session; any number wraps it in
  aiohttp-retry, which re-POSTs on 5xx (three SMS for one notice). A 503 reaches Twilio once.
- Timeouts: the SDK's own ``timeout`` does not stop a stalled response, so every call runs
  under ``asyncio.timeout``. An aiohttp trace records whether the request left this process:
  a timeout before that is transient, after it the outcome is unknown (reconcile first).
- ``TwilioRestException`` has ``status`` and ``code`` but no headers: the HTTP client below
  keeps ``Retry-After`` of a 429/503 in a context variable of the calling task.

Exception texts from Twilio quote the phone number, so they never go into error details.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.channels.base import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownOutcomeError,
)

T = TypeVar("T")

DEFAULT_API_BASE = "https://api.twilio.com"
CLOCK_SKEW_S = 60.0  # tolerance between our clock and Twilio's when reconciling
RECONCILE_LIMIT = 200  # at most this many records are read back per reconciliation query

_retry_after: ContextVar[str | None] = ContextVar("twilio_retry_after", default=None)
_request_sent: ContextVar[bool] = ContextVar("twilio_request_sent", default=False)


class _HeaderKeepingHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # untyped SDK
    """The SDK's async HTTP client, remembering ``Retry-After`` of a refused request.

    It also sends the credentials as an ``Authorization`` header itself: aiohttp 3.14
    deprecates its ``auth=`` parameter and ``BasicAuth``, which the SDK would use.
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK calls it so; asyncio.timeout bounds us
        allow_redirects: bool = False,
    ) -> Any:
        headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        _retry_after.set(None)
        response = await super().request(
            method, url, params=params, data=data, headers=headers, auth=None,
            timeout=timeout, allow_redirects=allow_redirects,
        )
        if response.status_code in (429, 503):
            _retry_after.set((response.headers or {}).get("Retry-After"))
        return response


async def _on_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    _request_sent.set(True)


def _trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify_twilio_error(
    exc: TwilioRestException | TwilioServiceException, retry_after: str | None = None
) -> DeliveryError:
    """Map Twilio's answer to what the dispatcher must do (see ``channels/base.py``)."""
    status = int(getattr(exc, "status", 0) or 0)
    code = int(getattr(exc, "code", 0) or status)
    reason = f"twilio_{code}"
    detail = f"HTTP {status}"
    if status == 429 or code == 20429 or status >= 500:
        return TransientDeliveryError(reason, detail, parse_retry_after(retry_after))
    if status in (401, 403):  # credentials or account: an operator can fix it, notices wait
        return TransientDeliveryError(reason, detail)
    return PermanentDeliveryError(reason, detail)


class TwilioApi:
    """One lazily created SDK client for one Twilio account."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        timeout_s: float = 15.0,
    ) -> None:
        if not (account_sid and auth_token):
            raise ValueError("set DUNNING_TWILIO_ACCOUNT_SID and DUNNING_TWILIO_AUTH_TOKEN")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self._client: Client | None = None
        self._http: _HeaderKeepingHttpClient | None = None

    def client(self) -> Client:
        """The SDK client; created on first use, which must be inside the running loop."""
        if self._client is None:
            asyncio.get_running_loop()  # RuntimeError outside a loop, before any session
            self._http = _HeaderKeepingHttpClient(trace_configs=[_trace()], max_retries=None)
            client = Client(self._account_sid, self._auth_token, http_client=self._http)
            client.edge = None
            client.region = None
            client.api.base_url = self._api_base
            self._client = client
        return self._client

    async def warm_up(self) -> None:
        """Create the client and import the SDK's lazily loaded resources now, at start-up,
        not during the first send (their import blocks the event loop for tens of ms)."""
        client = self.client()
        _ = (client.api.v2010.account.messages, client.api.v2010.account.calls)

    async def call(self, request: Callable[[Client], Awaitable[T]], *, creates: bool) -> T:
        """Run one SDK call under the timeout and translate every failure.

        ``creates``: the call makes something at Twilio (a message, a call), so a request
        that may have arrived ends in :class:`UnknownOutcomeError`, never in a retry.
        """
        _request_sent.set(False)
        _retry_after.set(None)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await request(self.client())
        except (TwilioRestException, TwilioServiceException) as exc:
            # Twilio's message quotes the phone number: keep it out of logged tracebacks.
            raise classify_twilio_error(exc, _retry_after.get()) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._lost(exc, creates=creates) from exc
        except json.JSONDecodeError as exc:  # a 2xx answer that is not JSON: probably done
            reason, detail = "twilio_bad_response", "unreadable success response"
            if creates:
                raise UnknownOutcomeError(reason, detail) from exc
            raise TransientDeliveryError(reason, detail) from exc

    @staticmethod
    def _lost(exc: Exception, *, creates: bool) -> DeliveryError:
        kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
        if isinstance(exc, aiohttp.ClientConnectorError) or not _request_sent.get():
            return TransientDeliveryError(f"twilio_{kind}", "request not sent")
        if creates:
            return UnknownOutcomeError(f"twilio_{kind}", "request sent, no answer")
        return TransientDeliveryError(f"twilio_{kind}", "no answer")

    async def find_messages(self, to: str, from_: str, since: datetime) -> list[dict[str, Any]]:
        """Messages from ``from_`` to ``to`` created at or after ``since`` (for reconciliation).

        Twilio filters by ``DateSent>``; the result is filtered again by ``date_created``
        (minus ``CLOCK_SKEW_S``), since a date filter may be applied per day. Compare bodies
        to tell two notices to the same phone apart.
        """
        return await self._find(lambda client, after: client.messages.list_async(
            to=to, from_=from_, date_sent_after=after, limit=RECONCILE_LIMIT),
            _message_dict, since)

    async def find_calls(self, to: str, from_: str, since: datetime) -> list[dict[str, Any]]:
        """Calls from ``from_`` to ``to`` started at or after ``since`` (for reconciliation)."""
        return await self._find(lambda client, after: client.calls.list_async(
            to=to, from_=from_, start_time_after=after, limit=RECONCILE_LIMIT),
            _call_dict, since)

    async def _find(self, listing: Callable[[Client, datetime], Awaitable[list[Any]]],
                    convert: Callable[[Any], dict[str, Any]],
                    since: datetime) -> list[dict[str, Any]]:
        """One list call of the SDK, read back as dicts of the records created since."""
        after = _utc(since)

        async def read(client: Client) -> list[Any]:
            return await listing(client, after)

        found = await self.call(read, creates=False)
        return [convert(record) for record in found if _recent(record.date_created, after)]

    async def aclose(self) -> None:
        """Close the SDK's aiohttp session (idempotent)."""
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()


def _utc(when: datetime) -> datetime:
    # The SDK formats a datetime as "%Y-%m-%dT%H:%M:%SZ" without converting it: do it here.
    if when.tzinfo is None:
        raise ValueError("reconciliation needs an aware datetime")
    return when.astimezone(UTC)


def _recent(created: datetime | None, after: datetime) -> bool:
    return created is None or created >= after - timedelta(seconds=CLOCK_SKEW_S)


def _message_dict(message: Any) -> dict[str, Any]:
    keys = ("sid", "to", "status", "body", "date_created", "date_sent")
    return {"from": _sender(message), **{key: getattr(message, key, None) for key in keys}}


def _call_dict(call: Any) -> dict[str, Any]:
    keys = ("sid", "to", "status", "date_created", "start_time")
    return {"from": _sender(call), **{key: getattr(call, key, None) for key in keys}}


def _sender(record: Any) -> str | None:
    # MessageInstance keeps "from" as ``from_``, CallInstance as ``_from``.
    value = getattr(record, "from_", None) or getattr(record, "_from", None)
    return str(value) if value is not None else None
