"""The bench's settings: unique broker names, temporary ledgers, the local providers."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from service.bench.common import free_port, noon_offset_s
from service.bench.responders import ACCOUNT_SID, AUTH_TOKEN, Responders
from service.config import Settings

TWILIO_FROM = "+15005550006"


@dataclass
class BenchEnv:
    """One run of the bench: every name it makes on the broker, removed by ``cleanup``."""

    workdir: Path
    responders: Responders
    base: Settings = field(default_factory=Settings)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    clock_offset_s: float = field(default_factory=noon_offset_s)
    made: list[Settings] = field(default_factory=list)

    def settings(self, tag: str, **changes: Any) -> Settings:
        """Settings of one measurement: its own queue names and SQLite ledger."""
        prefix = f"bench-{self.run}-{tag}"
        values: dict[str, Any] = {
            "exchange": f"{prefix}.events", "queue": f"{prefix}.dispatch",
            "dead_queue": f"{prefix}.dead", "outcomes_exchange": f"{prefix}.outcomes",
            "database_url": f"sqlite:///{self.workdir / f'{tag}.db'}",
            "database_schema": None,
            "smtp_host": "127.0.0.1", "smtp_port": self.responders.smtp_port,
            "smtp_tls": "none", "email_from": "collections@bank.example",
            "twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
            "twilio_from": TWILIO_FROM, "twilio_api_base": self.responders.twilio_base,
            "rate_sms": "off", "rate_email": "off", "rate_voice": "off", "rate_letter": "off",
            "redis_url": None, "public_url": None, "letter_spool_dir": None,
            "printmail_url": None, "outbox_dir": self.workdir / "outbox",
            "clock_offset_s": self.clock_offset_s, "http_host": "127.0.0.1",
            "http_port": free_port(), "log_level": "INFO", "log_format": "json",
            "templates_dir": self.base.templates_dir.resolve(),
            "policy_file": self.base.policy_path.resolve(),
        }
        made = self.base.model_copy(update={**values, **changes})
        self.made.append(made)
        return made

    def worker_env(self, settings: Settings, lag_file: Path) -> dict[str, str]:
        """The environment of ``python -m service.bench.worker`` with these settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
        for name, value in settings.model_dump().items():
            if value is not None:
                env[f"DUNNING_{name.upper()}"] = str(value)
        env["DUNNING_BENCH_LAG_FILE"] = str(lag_file)
        return env

    async def cleanup(self) -> None:
        """Delete every queue and exchange the run declared (what is not there is skipped)."""
        connection = await aio_pika.connect_robust(self.base.amqp_url)
        async with connection:
            for settings in self.made:
                for queue in (settings.queue, settings.dead_queue, f"{settings.queue}.raw",
                              f"{settings.outcomes_exchange}.bench"):
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.queue_delete(queue)
                for exchange in (settings.exchange, settings.outcomes_exchange):
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.exchange_delete(exchange)
