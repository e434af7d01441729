"""Bad input at scale: hypothesis-made events and raw bytes through the real intake. Every
message is either recorded or dead-lettered with a code, and the worker never dies."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from service.ledger import SqlLedger
from service.ledger.schema import events
from tests.helpers.worker import Broker, WorkerProcess, sample

CODES = {"invalid_json", "invalid_event", "unknown_type", "unknown_stage", "too_large"}
SAMPLES = ["escalated_m1_cn.json", "escalated_early_us.json", "payment_received.json",
           "hold_dispute.json", "opted_out.json"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8)


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A sample event with fields changed, removed or replaced by arbitrary JSON."""
    event: dict[str, Any] = sample(draw(st.sampled_from(SAMPLES)))
    event["event_id"] = f"evt-fuzz-{draw(st.uuids()).hex}"
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(event)))
        if draw(st.booleans()):
            event.pop(key)
        else:
            event[key] = draw(json_values)
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode()


messages = st.one_of(mutated_events(), st.binary(max_size=300),
                     json_values.map(lambda v: json.dumps(v).encode()))


async def test_every_message_is_recorded_or_dead_lettered(
        start_worker: Callable[..., WorkerProcess], broker: Broker, tmp_path: Path) -> None:
    bodies: list[bytes] = []

    @settings(max_examples=300, database=None, suppress_health_check=list(HealthCheck))
    @given(messages)
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    worker = start_worker(DUNNING_RATE_SMS="off")
    for body in bodies:
        await broker.publish_raw(body, "fuzz")
    marker = sample("hold_dispute.json", event_id="evt-fuzz-marker")
    await broker.publish(marker)

    ledger = SqlLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        for _ in range(600):
            seen = set(await ledger.read(lambda conn: conn.execute(
                select(events.c.event_id)).scalars().all()))
            if marker["event_id"] in seen:
                break
            await asyncio.sleep(0.1)
    finally:
        await ledger.aclose()
    letters = await broker.dead_letters(len(bodies), timeout_s=5)
    assert all(str((m.headers or {}).get("x-dunning-error")) in CODES and
               (m.headers or {}).get("x-dunning-error-detail") for m in letters)
    dead = Counter(m.body for m in letters)
    recorded = 0
    for body in bodies:
        if dead[body]:
            dead[body] -= 1
            continue
        event_id = json.loads(body)["event_id"]  # not dead: it must be a recorded event
        assert event_id in seen, body
        recorded += 1
    assert sum(dead.values()) == 0  # nothing dead that was not published
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.http_status("/readyz") == 200
    metrics = worker.http_text("/metrics")
    dead_codes = {code for code in CODES if f'code="{code}"' in metrics}
    assert dead_codes and dead_codes <= CODES
    print(f"\n{len(bodies)} generated messages: {recorded} recorded, {len(bodies) - recorded} "
          f"dead-lettered ({', '.join(sorted(dead_codes))}); the worker kept serving")
