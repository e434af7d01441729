"""The worker with no provider configured: notices land in the outbox as files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.worker import Broker, WorkerProcess, by_channel, unique_prefix


async def test_m1_cn_writes_sms_and_email_to_the_outbox(tmp_path: Path) -> None:
    prefix = unique_prefix()
    async with Broker(prefix) as broker:
        worker = WorkerProcess(tmp_path, prefix).start()
        try:
            await broker.publish_sample("escalated_m1_cn.json")
            outcomes = by_channel(await broker.wait_outcomes(2))
        finally:
            assert worker.terminate() == 0, worker.logs()
    assert {c: o["status"] for c, o in outcomes.items()} == {"sms": "sent", "email": "sent"}
    assert outcomes["sms"]["provider"] == "outbox"
    sms_file = tmp_path / "outbox" / "sms" / f"{outcomes['sms']['notice_id']}.json"
    sms = json.loads(sms_file.read_text(encoding="utf-8"))
    assert "1,830.00" in sms["body"] and "4321" in sms["body"]
    emails = list((tmp_path / "outbox" / "email").glob("*.eml"))
    assert len(emails) == 1
    assert set(broker.outcome_keys) == {"sent.sms", "sent.email"}
    # each names its decision: the notice and the decision's number in the ledger
    assert [message_id.rpartition("/")[0] if message_id else None
            for message_id in broker.outcome_ids] == [o["notice_id"] for o in broker.outcomes]
    assert all(message_id and message_id.rpartition("/")[2].isdigit()
               for message_id in broker.outcome_ids)
