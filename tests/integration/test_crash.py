"""Workers killed with SIGKILL mid-burst lose nothing and send nothing twice.

After each restart every notice reaches exactly one terminal outcome in the ledger; the
Twilio double receives each SMS at most once (notices whose earlier attempt had an unknown
outcome are reconciled against Twilio's message list first), and the SMTP server sees each
email's Message-ID once (a re-sent email keeps its Message-ID, so receivers see one message).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.ledger import SqlLedger
from service.ledger.schema import decisions
from tests.helpers.ledgers import ledger_states
from tests.helpers.smtp_server import SmtpTestServer
from tests.helpers.twilio_double import TwilioDouble
from tests.helpers.worker import Broker, WorkerProcess, us_burst

EVENTS = 1000
KILLS = 3
SETTINGS = {"DUNNING_LEASE_S": "2", "DUNNING_RATE_SMS": "off"}


async def ledger_counts(url: str) -> tuple[dict[str, int], Counter[str], int]:
    ledger = SqlLedger.from_url(url)
    try:
        states, terminal = await ledger_states(ledger)
        reconciled = await ledger.read(lambda conn: conn.execute(select(func.count()).where(
            decisions.c.reason == "reconciled")).scalar_one())
    finally:
        await ledger.aclose()
    return states, terminal, int(reconciled)


@pytest.mark.timeout(600)  # three restarts: minutes on a loaded machine, ~25 s alone
async def test_sigkill_three_times_during_a_burst_loses_and_duplicates_nothing(
        start_worker: Callable[..., WorkerProcess], broker: Broker, smtp: SmtpTestServer,
        twilio: TwilioDouble, tmp_path: Path) -> None:
    notices_total = EVENTS * 2
    worker = start_worker(**SETTINGS)
    await broker.publish(*us_burst(EVENTS, "burst"))
    for cycle in range(1, KILLS + 1):
        await broker.wait_notices(notices_total * cycle // (KILLS + 1), timeout_s=120)
        worker.kill()
        worker = start_worker(**SETTINGS)
    await broker.wait_notices(notices_total, timeout_s=180)

    states, terminal, reconciled = await ledger_counts(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert states == {"sent": notices_total}, states
    assert len(terminal) == notices_total and set(terminal.values()) == {1}
    sms_per_phone = Counter(m.to for m in twilio.messages)
    ids = Counter(mail.message["Message-ID"] for mail in smtp.received)
    lost = notices_total - len(sms_per_phone) - len(ids)
    duplicates = sum(n - 1 for n in sms_per_phone.values())  # an email counts once per Message-ID
    print(f"\n{KILLS} SIGKILLs, {EVENTS} events, {notices_total} notices: lost = {lost}, "
          f"duplicates = {duplicates}, reconciled = {reconciled}; SMTP deliveries "
          f"{len(smtp.received)} for {len(ids)} Message-IDs (same-ID re-sends "
          f"{len(smtp.received) - len(ids)})")
    assert lost == 0 and duplicates == 0
