"""A worker killed with SIGKILL mid-burst loses nothing: after a restart every notice reaches
exactly one terminal outcome in the ledger, and every outcome is published."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from service.ledger import SqlLedger
from service.ledger.schema import TERMINAL, decisions, notices
from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, sample

EVENTS = 500


def burst() -> list[dict[str, object]]:
    events = []
    for i in range(EVENTS):
        event = sample("escalated_early_us.json", event_id=f"evt-burst-{i:04d}")
        event["account"] = {**event["account"], "account_id": f"CC-B-{i:04d}"}  # type: ignore[dict-item]
        events.append(event)
    return events


async def test_sigkill_during_a_burst_loses_nothing(
        start_worker: Callable[..., WorkerProcess], broker: Broker, smtp: SmtpTestServer,
        twilio: TwilioDouble, tmp_path: Path) -> None:
    settings = {"DUNNING_LEASE_S": "2"}
    worker = start_worker(**settings)
    await broker.publish(*burst())
    await broker.wait_outcomes(150, timeout_s=60)
    worker.kill()
    killed_at = len(broker.outcomes)
    start_worker(**settings)
    await broker.wait_notices(EVENTS * 2, timeout_s=120)

    ledger = SqlLedger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        async with ledger.engine.connect() as conn:
            states = dict((await conn.execute(select(notices.c.state, func.count())
                                              .group_by(notices.c.state))).all())
            terminal = Counter((await conn.execute(select(decisions.c.notice_id).where(
                decisions.c.status.in_(TERMINAL)))).scalars())
    finally:
        await ledger.aclose()
    assert states == {"sent": EVENTS * 2}, states
    assert len(terminal) == EVENTS * 2 and set(terminal.values()) == {1}
    published = Counter(o["notice_id"] for o in broker.outcomes if o["status"] in TERMINAL)
    assert len(published) == EVENTS * 2
    republished = sum(published.values()) - len(published)
    received = len(twilio.messages) + len(smtp.received)
    print(f"\nkilled after {killed_at} outcomes; providers received {received} sends "
          f"for {EVENTS * 2} notices ({received - EVENTS * 2} re-sends of in-flight notices); "
          f"{republished} outcomes published twice (at-least-once relay)")
    assert received >= EVENTS * 2
