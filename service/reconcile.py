"""Unknown outcomes (CONTRACT.md §4): before a notice whose earlier attempt may have reached
the provider is sent again, find out whether it did.

- SMS and calls: the adapter lists Twilio's messages or calls to that number from our
  sender since the earlier claim; one with the same body that no other notice owns is this
  notice's, and is recorded as ``sent`` (reason ``reconciled``).
- Email: re-sent with the same Message-ID, so receivers and audits see one message.
- Letters: rewritten to the same spool file, or re-submitted with the same idempotency key.

Every reconciliation is a ledger decision (status ``reconcile``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from service import metrics
from service.channels.base import ChannelAdapter, Receipt, RenderedNotice
from service.ledger import SqlLedger

UNKNOWN = "unknown_outcome"


@runtime_checkable
class FindsSent(Protocol):
    """An adapter that can ask its provider what it already sent."""

    async def find_sent(self, notice: RenderedNotice, since: datetime) -> list[Receipt]: ...


def needs_reconciling(notice: dict[str, Any]) -> bool:
    """A lease that expired mid-send, or an attempt that ended with an unknown outcome."""
    return bool(notice.get("lease_expired")) or str(notice.get("reason") or "").startswith(
        UNKNOWN)


async def reconcile(ledger: SqlLedger, adapter: ChannelAdapter, notice: dict[str, Any],
                    rendered: RenderedNotice, now: datetime,
                    clock_offset_s: float = 0.0) -> Receipt | None:
    """The receipt of an earlier send of this notice, if the provider has one; else None.

    ``clock_offset_s``: the worker's shifted clock (DUNNING_CLOCK_OFFSET_S) is ours alone;
    the provider is asked in real time. Raises the adapter's DeliveryError if the provider
    cannot be asked (never send blind).
    """
    channel = notice["channel"]
    # any earlier attempt may be the one that got through, not only the last: look back to
    # when the notice was planned
    since = notice["created_at"] - timedelta(seconds=clock_offset_s)
    if not isinstance(adapter, FindsSent):
        await ledger.note(notice, "reconcile", now, reason="resend_idempotent",
                          rule="reconcile")
        metrics.RECONCILED.labels(channel, "idempotent").inc()
        return None
    for receipt in await adapter.find_sent(rendered, since):
        if not await ledger.provider_id_known(receipt.provider_id):
            metrics.RECONCILED.labels(channel, "found").inc()
            return receipt
    await ledger.note(notice, "reconcile", now, reason="not_found", rule="reconcile")
    metrics.RECONCILED.labels(channel, "not_found").inc()
    return None
