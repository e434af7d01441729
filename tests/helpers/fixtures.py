"""Fixtures for the provider test servers; ``tests/conftest.py`` star-imports this module."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble

__all__ = ["smtp_server", "tls_certificate", "twilio_double"]


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, plain text, collecting what it gets."""
    with SmtpTestServer() as server:
        yield server


@pytest.fixture
async def twilio_double() -> AsyncIterator[TwilioDouble]:
    """The Twilio REST double on 127.0.0.1; point the SDK at ``twilio_double.base_url``."""
    async with TwilioDouble() as double:
        yield double


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throw-away self-signed certificate for 127.0.0.1: ``(certfile, keyfile)``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)
