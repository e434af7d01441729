"""No debtor's name, phone number, email or address reaches the worker's logs."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.helpers.worker import SAMPLES, Broker, WorkerProcess


def personal_data() -> set[str]:
    found: set[str] = set()
    for path in [*SAMPLES.glob("*.json"), *SAMPLES.glob("invalid/*.json")]:
        try:
            event = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        debtor = event.get("debtor") or {}
        for key in ("name", "email", "phone"):
            if debtor.get(key):
                found.add(debtor[key])
        if debtor.get("phone"):
            found.add(debtor["phone"].lstrip("+"))
            found.add(debtor["phone"][-10:])
        address = debtor.get("address") or {}
        found.update(address.get("lines") or [])
        if event.get("destination"):
            found.add(event["destination"])
    return found


async def test_worker_logs_carry_no_personal_data(
        start_worker: Callable[..., WorkerProcess], broker: Broker) -> None:
    worker = start_worker(DUNNING_LOG_LEVEL="DEBUG")
    names = ["opted_out.json", "escalated_m1_cn.json", "escalated_early_us.json",
             "escalated_m3_letter_cn.json", "payment_received.json", "hold_dispute.json"]
    for name in names:
        await broker.publish_sample(name)
    for path in (SAMPLES / "invalid").iterdir():
        await broker.publish_raw(path.read_bytes(), "delinquency.escalated")
    await broker.wait_outcomes(8, timeout_s=30)
    assert worker.terminate() == 0
    logs = worker.logs()
    assert "notice_sent" in logs and "event_dead_lettered" in logs
    leaked = sorted(value for value in personal_data() if value in logs)
    assert leaked == [], leaked
