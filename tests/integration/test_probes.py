"""HTTP probes and metrics of a running worker: liveness never depends on the broker,
readiness does; the metrics count what happened."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from tests.helpers.tcp_proxy import ThreadedProxy
from tests.helpers.worker import SAMPLES, Broker, WorkerProcess

StartWorker = Callable[..., WorkerProcess]


async def wait_status(worker: WorkerProcess, path: str, status: int, timeout_s: float) -> None:
    for _ in range(int(timeout_s * 10)):
        if await asyncio.to_thread(worker.http_status, path) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}")


async def test_readyz_follows_the_broker_and_healthz_does_not(
        start_worker: StartWorker) -> None:
    proxy = ThreadedProxy(5672)
    proxy.start()
    try:
        worker = start_worker(DUNNING_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        assert worker.http_status("/readyz") == 200
        proxy.cut()
        await wait_status(worker, "/readyz", 503, 20)
        assert worker.http_status("/healthz") == 200
        proxy.start()
        await wait_status(worker, "/readyz", 200, 30)
        assert worker.http_status("/healthz") == 200
    finally:
        proxy.close()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") \
        + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_count_events_dead_letters_and_notices(
        start_worker: StartWorker, broker: Broker) -> None:
    worker = start_worker()
    for name in ("escalated_m1_cn.json", "escalated_early_us.json"):
        await broker.publish_sample(name)
    for path in (SAMPLES / "invalid").iterdir():
        await broker.publish_raw(path.read_bytes(), "delinquency.escalated")
    await broker.wait_outcomes(4)
    await asyncio.sleep(0.3)
    text = await asyncio.to_thread(worker.http_text, "/metrics")
    assert metric(text, "dunning_events_consumed_total") == 6
    assert metric(text, "dunning_events_dead_lettered_total", code="invalid_event") == 2
    assert metric(text, "dunning_events_dead_lettered_total", code="invalid_json") == 1
    assert metric(text, "dunning_events_dead_lettered_total", code="unknown_stage") == 1
    assert metric(text, "dunning_notices_total", channel="sms", reason="", status="sent") == 2
    assert metric(text, "dunning_notices_total", channel="email", reason="", status="sent") == 2
    assert metric(text, "dunning_send_seconds_count", channel="sms") == 2
    assert metric(text, "dunning_consumer_attached") == 1
    # the worker's own CPU and memory, as in the library's default registry
    assert metric(text, "process_cpu_seconds_total") > 0
    assert 20e6 < metric(text, "process_resident_memory_bytes") < 1e9
    assert metric(text, "python_gc_collections_total", generation="0") > 0


async def test_waiting_notices_are_counted_by_when_they_are_due(
        start_worker: StartWorker, broker: Broker) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from tests.helpers.worker import offset_to

    late = datetime.now(ZoneInfo("Asia/Shanghai")).replace(hour=23, minute=0, second=0)
    worker = start_worker(DUNNING_CLOCK_OFFSET_S=str(offset_to(late)))
    await broker.publish_sample("escalated_m1_cn.json")
    await broker.wait_outcomes(2)  # both deferred to 08:00, nine hours on
    for _ in range(100):
        text = await asyncio.to_thread(worker.http_text, "/metrics")
        if metric(text, "dunning_waiting_notices", due="1d") == 2:
            break
        await asyncio.sleep(0.1)
    assert metric(text, "dunning_waiting_notices", due="1d") == 2
    assert metric(text, "dunning_waiting_notices", due="due") == 0
    assert metric(text, "dunning_notices_total", channel="sms", reason="quiet_hours",
                  status="deferred") == 1
