"""`dunning explain` and `dunning ledger show`: why a notice was (not) sent, from the ledger."""

from __future__ import annotations

import json
from typing import Any, TextIO

from service.config import Settings
from service.ledger import SqlLedger


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _line(decision: dict[str, Any]) -> str:
    outcome = json.loads(decision["outcome"]) if decision.get("outcome") else {}
    extra = f"  not before {outcome['not_before']}" if outcome.get("not_before") else ""
    return (f"  {_when(decision['at'])}  {decision['status']:<10} "
            f"{decision.get('reason') or '-':<28} rule {decision.get('rule') or '-'}"
            f"  (attempt {decision['attempt']}){extra}")


def _header(notice: dict[str, Any]) -> list[str]:
    provider = f" via {notice['provider']} {notice['provider_id']}" if notice["provider"] else ""
    delivery = f", delivery {notice['delivery_status']}" if notice["delivery_status"] else ""
    return [
        f"notice {notice['notice_id']}: {notice['channel']} · template {notice['template']} · "
        f"locale {notice['locale']}",
        f"  event {notice['event_id']} · account {notice['account_id']} · "
        f"debtor {notice['debtor_id']} · stage {notice['stage']}",
        f"  state {notice['state']}{' (' + notice['reason'] + ')' if notice['reason'] else ''}"
        f"{provider}{delivery} · due {_when(notice['due_at'])} · attempts {notice['attempts']}",
    ]


async def _open(settings: Settings) -> SqlLedger:
    return SqlLedger.from_url(settings.database_url, settings.database_schema)


async def explain(settings: Settings, notice_id: str, out: TextIO) -> bool:
    ledger = await _open(settings)
    try:
        notice = await ledger.notice(notice_id)
        if notice is None:
            return False
        out.write("\n".join(_header(notice)) + "\ntimeline:\n")
        for decision in await ledger.timeline(notice_id):
            out.write(_line(decision) + "\n")
        return True
    finally:
        await ledger.aclose()


async def show_account(settings: Settings, account_id: str, out: TextIO) -> int:
    ledger = await _open(settings)
    try:
        found = await ledger.notices_of_account(account_id)
        for notice in found:
            out.write("\n".join(_header(notice)) + "\n")
            for decision in await ledger.timeline(notice["notice_id"]):
                out.write(_line(decision) + "\n")
            out.write("\n")
        return len(found)
    finally:
        await ledger.aclose()
