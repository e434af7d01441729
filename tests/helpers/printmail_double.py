"""A print-and-mail API test double on aiohttp, in the shape of Lob's ``POST /v1/letters``.

It is strict where the real service would only hurt later: the API key (HTTP Basic user name)
must match, every request must carry an ``Idempotency-Key``, the body must be
``multipart/form-data`` with a PDF ``file``, a recipient (``to[name]``, ``to[address_line1]``,
``to[address_country]``), a return address (``from`` id or ``from[name]`` and
``from[address_line1]``), ``color`` and ``use_type``; an unknown field is refused (422).
A repeated ``Idempotency-Key`` answers the letter made the first time and makes nothing new,
like the real service.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

ALLOWED_FIELDS = frozenset({
    "description", "from", "file", "color", "double_sided", "address_placement", "use_type",
    "mail_type", "metadata[notice_id]",
    *(f"{who}[{part}]" for who in ("to", "from") for part in (
        "name", "company", "address_line1", "address_line2", "address_city", "address_state",
        "address_zip", "address_country")),
})
REQUIRED_FIELDS = ("to[name]", "to[address_line1]", "to[address_country]", "file", "color",
                   "use_type")


@dataclass(frozen=True, slots=True)
class Letter:
    """One letter the double accepted."""

    id: str
    idempotency_key: str
    fields: dict[str, str]
    pdf: bytes


@dataclass(slots=True)
class _Fault:
    status: int = 0
    retry_after_s: float | None = None
    stall_s: float = 0.0


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "status_code": status}},
                             status=status)


@dataclass(eq=False)
class PrintMailDouble:
    """``async with PrintMailDouble() as api:``; point the adapter at ``api.base_url``."""

    api_key: str = "test_printmail_key"
    letters: list[Letter] = field(default_factory=list)
    by_key: dict[str, Letter] = field(default_factory=dict)
    post_attempts: int = 0  # every POST that reached the double, answered or not
    replays: int = 0  # requests answered from an earlier letter of the same key
    _faults: deque[_Fault] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_post("/v1/letters", self._create)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, n: int, status: int = 503, *, retry_after_s: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` and make no letter."""
        self._faults.extend(_Fault(status=status, retry_after_s=retry_after_s) for _ in range(n))

    def stall_next(self, n: int, seconds: float) -> None:
        """Make the next ``n`` letters normally but answer only after ``seconds``."""
        self._faults.extend(_Fault(stall_s=seconds) for _ in range(n))

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.post_attempts += 1
        fault = self._faults.popleft() if self._faults else _Fault()
        if fault.status:
            response = error(fault.status, "injected failure")
            if fault.retry_after_s is not None:
                response.headers["Retry-After"] = f"{fault.retry_after_s:g}"
            return response
        if not self._authorized(request):
            return error(401, "Your API key is not valid.")
        key = request.headers.get("Idempotency-Key", "")
        if not key or len(key) > 256:
            return error(400, "an Idempotency-Key header of 1-256 characters is required")
        if key in self.by_key:
            self.replays += 1
            return web.json_response(self._resource(self.by_key[key]))
        if not request.content_type.startswith("multipart/form-data"):
            return error(415, "send multipart/form-data")
        form = await request.post()
        try:
            letter = self._accept(key, form)
        except ValueError as exc:
            return error(422, str(exc))
        finally:
            for value in form.values():
                if isinstance(value, web.FileField):
                    value.file.close()
        self.letters.append(letter)
        self.by_key[key] = letter
        if fault.stall_s:
            await asyncio.sleep(fault.stall_s)
        return web.json_response(self._resource(letter))

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.api_key}:".encode()).decode("ascii")
        return header == f"Basic {expected}"

    @staticmethod
    def _accept(key: str, form: Any) -> Letter:
        unknown = sorted(set(form.keys()) - ALLOWED_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        missing = [name for name in REQUIRED_FIELDS if not form.get(name)]
        if not (form.get("from") or (form.get("from[name]") and form.get("from[address_line1]"))):
            missing.append("from")
        if missing:
            raise ValueError(f"missing fields: {', '.join(missing)}")
        upload = form["file"]
        pdf = upload.file.read() if isinstance(upload, web.FileField) else b""
        if not pdf.startswith(b"%PDF-"):
            raise ValueError("file must be a PDF")
        fields = {name: str(value) for name, value in form.items() if name != "file"}
        return Letter(f"ltr_{uuid.uuid4().hex[:20]}", key, fields, pdf)

    @staticmethod
    def _resource(letter: Letter) -> dict[str, Any]:
        return {"id": letter.id, "object": "letter", "description": letter.fields.get("description"),
                "metadata": {"notice_id": letter.fields.get("metadata[notice_id]")},
                "color": letter.fields.get("color") == "true",
                "use_type": letter.fields.get("use_type")}
