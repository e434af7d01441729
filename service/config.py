"""Settings from the environment (``DUNNING_*``, CONTRACT.md §7). No I/O here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|min|m|h|hour)\s*$")
_PERIOD_S = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}


RATE_OFF = ("off", "none", "unlimited")


def parse_rate(text: str) -> tuple[float, float] | None:
    """``"10/s"`` -> ``(10, 1.0)``: at most N sends begin in any window of that many seconds.

    ``"off"`` -> None: no pacing at all (benchmarks, a provider with no limit).
    """
    if text.strip().lower() in RATE_OFF:
        return None
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r} is not of the form N/s, N/min or N/h (or off)")
    return float(match.group(1)), _PERIOD_S[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUNNING_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    exchange: str = "dunning.events"
    queue: str = "dunning.dispatch"
    dead_queue: str = "dunning.dead"
    outcomes_exchange: str = "dunning.outcomes"
    prefetch: int = Field(default=256, ge=1, le=65535)

    database_url: str = "sqlite:///dunning.db"
    database_schema: str | None = None  # PostgreSQL schema for the ledger's tables
    redis_url: str | None = None

    templates_dir: Path = Path("./templates")
    policy_file: Path | None = None
    outbox_dir: Path = Path("./outbox")

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_pool_size: int = Field(default=4, ge=1, le=64)
    email_from: str = "collections@localhost"

    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    twilio_concurrency: int = Field(default=16, ge=1, le=256)
    twilio_voice_zh: str = "Polly.Zhiyu"  # text-to-speech voice of calls in Mandarin (cmn-CN)
    twilio_voice_en: str = "Polly.Joanna"  # and in English (en-US)

    letter_spool_dir: Path | None = None
    letter_processes: int = Field(default=2, ge=1, le=64)  # processes rendering PDFs
    letter_render_timeout_s: float = Field(default=120.0, gt=0)
    printmail_url: str | None = None  # a print-and-mail API (Lob's shape)
    printmail_api_key: str | None = None
    printmail_from: str | None = None  # the provider's id of our return address

    http_port: int = 8080
    http_host: str = "0.0.0.0"  # noqa: S104 - a container's probes reach it from outside
    public_url: str | None = None

    clock_offset_s: float = 0.0
    provider_timeout_s: float = Field(default=15.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    circuit_failures: int = Field(default=5, ge=1)  # transient failures in a row that open it
    circuit_open_s: float = Field(default=10.0, gt=0)  # before the first probe
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=900.0, gt=0)
    dispatch_batch: int = Field(default=64, ge=1, le=10_000)
    send_concurrency: int = Field(default=16, ge=1, le=1_000)  # sends in flight per channel
    dispatch_poll_s: float = Field(default=0.5, gt=0)
    intake_batch: int = Field(default=100, ge=1, le=10_000)
    intake_flush_s: float = Field(default=0.02, gt=0)
    drain_timeout_s: float = Field(default=30.0, gt=0)
    startup_timeout_s: float = Field(default=15.0, gt=0)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    rate_email: str | None = None
    rate_sms: str | None = None
    rate_voice: str | None = None
    rate_letter: str | None = None

    @field_validator("rate_email", "rate_sms", "rate_voice", "rate_letter")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value:
            parse_rate(value)
        return value

    @property
    def policy_path(self) -> Path:
        return self.policy_file or self.templates_dir / "policy.yaml"

    @property
    def public_base_url(self) -> str:
        return (self.public_url or f"http://localhost:{self.http_port}").rstrip("/")

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from)

    def rate_for(self, channel: str, default: str | None = None) -> tuple[float, float] | None:
        """The channel's pacing: its DUNNING_RATE_<CHANNEL>, else the adapter's default."""
        text: str | None = getattr(self, f"rate_{channel}", None) or default
        return parse_rate(text) if text else None
