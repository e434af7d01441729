"""The bench's providers on loopback: an SMTP sink on aiosmtpd and a Twilio-compatible responder.

They run in a process of their own (``python -m service.bench.responders``), so that the
process being measured does not share its event loop or the GIL with them. The process
prints its ports as one JSON line, serves until its stdin closes, then prints how many
messages each server took.

The Twilio responder answers ``POST /2010-04-01/Accounts/{sid}/Messages.json`` as Twilio does
(201 and the message resource, status ``queued``) after checking the account in the path and
the form's required fields; the list endpoint answers an empty page. It is the minimum the
twilio SDK needs; ``tests/helpers/twilio_double.py`` is the strict double for tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-auth-token"  # noqa: S105 - a loopback stand-in, not a credential
REQUIRED = ("To", "From", "Body")


@dataclass
class Counts:
    emails: int = 0
    sms: int = 0


class SmtpSink:
    """aiosmtpd handler: accepts every message and counts it."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.counts.emails += 1
        return "250 Message accepted for delivery"


def twilio_app(counts: Counts) -> web.Application:
    serial = itertools.count(1)
    path = "/2010-04-01/Accounts/{sid}/Messages.json"

    async def create(request: web.Request) -> web.Response:
        if request.match_info["sid"] != ACCOUNT_SID or "Authorization" not in request.headers:
            return web.json_response({"code": 20003, "status": 401}, status=401)
        form = await request.post()
        missing = [name for name in REQUIRED if not form.get(name)]
        if missing:
            return web.json_response({"code": 21604, "status": 400,
                                      "message": f"{missing[0]} is required"}, status=400)
        counts.sms += 1
        now = formatdate(usegmt=True)
        sid = f"SM{next(serial):032x}"
        return web.json_response({
            "sid": sid, "account_sid": ACCOUNT_SID, "to": form["To"], "from": form["From"],
            "body": form["Body"], "status": "queued", "direction": "outbound-api",
            "num_segments": "1", "num_media": "0", "date_created": now, "date_updated": now,
            "api_version": "2010-04-01", "uri": f"{request.path[:-5]}/{sid}.json",
        }, status=201)

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"messages": [], "page": 0, "page_size": 50, "start": 0,
                                  "end": 0, "next_page_uri": None, "uri": request.path_qs})

    app = web.Application()
    app.router.add_post(path, create)
    app.router.add_get(path, listing)
    return app


async def serve() -> None:
    from aiosmtpd.smtp import SMTP

    counts = Counts()
    loop = asyncio.get_running_loop()
    handler = SmtpSink(counts)
    smtp = await loop.create_server(lambda: SMTP(handler, hostname="bench.local"),
                                    "127.0.0.1", 0)
    runner = web.AppRunner(twilio_app(counts), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"smtp_port": smtp.sockets[0].getsockname()[1],
                      "twilio_port": runner.addresses[0][1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    smtp.close()
    await runner.cleanup()
    print(json.dumps({"emails": counts.emails, "sms": counts.sms}), flush=True)


class Responders:
    """The responders' process, seen from the bench: ``start()``, ports, ``stop()`` -> counts."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.smtp_port = 0
        self.twilio_port = 0

    @property
    def twilio_base(self) -> str:
        return f"http://127.0.0.1:{self.twilio_port}"

    def start(self) -> Responders:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.bench.responders"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench's SMTP and Twilio responders did not start")
        ports = json.loads(line)
        self.smtp_port, self.twilio_port = int(ports["smtp_port"]), int(ports["twilio_port"])
        return self

    def stop(self) -> dict[str, int]:
        if self.proc is None:
            return {}
        try:
            out, _ = self.proc.communicate(input="", timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {}
        lines = [line for line in out.splitlines() if line.strip()]
        counts: dict[str, int] = json.loads(lines[-1]) if lines else {}
        return counts


if __name__ == "__main__":
    from service.bench.common import run_loop

    run_loop(serve())
