"""Integration fixtures: a worker subprocess wired to a real SMTP server and the Twilio double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, unique_prefix

TWILIO_FROM = "+15005550006"


@pytest.fixture
def smtp(smtp_server: SmtpTestServer) -> SmtpTestServer:
    return smtp_server


@pytest.fixture
def twilio(twilio_double: TwilioDouble) -> TwilioDouble:
    return twilio_double


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with Broker(unique_prefix()) as made:
        yield made


def provider_settings(smtp: SmtpTestServer, twilio: TwilioDouble) -> dict[str, str]:
    return {
        "DUNNING_SMTP_HOST": smtp.host, "DUNNING_SMTP_PORT": str(smtp.port),
        "DUNNING_SMTP_TLS": "none", "DUNNING_EMAIL_FROM": "collections@bank.example",
        "DUNNING_TWILIO_ACCOUNT_SID": twilio.account_sid,
        "DUNNING_TWILIO_AUTH_TOKEN": twilio.auth_token,
        "DUNNING_TWILIO_FROM": TWILIO_FROM, "DUNNING_TWILIO_API_BASE": twilio.base_url,
    }


@pytest.fixture
def start_worker(tmp_path: Path, broker: Broker, smtp: SmtpTestServer,
                 twilio: TwilioDouble) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers with real providers; every one started is stopped at the end."""
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        prefix = broker.names["DUNNING_EXCHANGE"].removesuffix(".events")
        merged = {**provider_settings(smtp, twilio), **settings}
        worker = WorkerProcess(tmp_path, prefix, **merged).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()
