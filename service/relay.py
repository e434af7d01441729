"""The outcome relay: publishes the ledger's unpublished outcomes, then marks them published.

The decision and its outcome are written in one transaction (a transactional outbox), so an
outcome is never lost: if the broker is away, the rows wait and go out when it is back.
"""

from __future__ import annotations

import asyncio

from service import metrics
from service.ledger import SqlLedger
from service.ledger.pending import relay_pending
from service.logs import get_logger
from service.outcomes import OutcomeSink, outcome_message

log = get_logger("dunning.relay")


class OutcomeRelay:
    def __init__(self, ledger: SqlLedger, sink: OutcomeSink, batch: int = 100,
                 poll_s: float = 1.0) -> None:
        self.ledger = ledger
        self.sink = sink
        self.batch = batch
        self.poll_s = poll_s
        self.wake = asyncio.Event()
        self.published = 0
        self._stopping = False

    async def run(self) -> None:
        while True:
            self.wake.clear()  # a decision recorded during the flush wakes the next wait
            try:
                sent = await self.flush_once()
            except Exception as exc:  # noqa: BLE001 - broker or ledger away: rows wait, retry
                metrics.LEDGER_ERRORS.labels("relay").inc()
                log.error("outcome_publish_failed", error=str(exc).splitlines()[0])
                await asyncio.sleep(self.poll_s)
                continue
            if sent < self.batch:
                if self._stopping:
                    return
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=self.poll_s)
                except TimeoutError:
                    pass

    async def flush_once(self) -> int:
        async def publish(rows: list[tuple[int, str]]) -> None:
            await self.sink.publish([outcome_message(row_id, body) for row_id, body in rows])

        sent = await relay_pending(self.ledger, self.batch, publish)
        self.published += sent
        return sent

    async def finish(self, timeout_s: float) -> None:
        """Publish what is left, then stop."""
        self._stopping = True
        self.wake.set()
