"""One behaviour suite for the ledger, run against SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, inspect, text

from service.intake import decide
from service.ledger import Accepted, Ingest, SqlLedger, direct
from service.ledger.contacts import _HISTORY
from service.ledger.schema import notices
from service.ledger.stats import WAITING_COUNTS, edges, waiting_by_bucket
from service.policy import load_policy
from tests.helpers.ledgers import make_ledger, notice_row

ROOT = Path(__file__).parent.parent.parent
SAMPLES = ROOT / "tests" / "samples"
POLICY = load_policy(ROOT / "templates" / "policy.yaml")
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlLedger]:
    async with make_ledger(request.param, tmp_path) as made:
        yield made


def sample(name: str, **changes: Any) -> Accepted:
    data = json.loads((SAMPLES / name).read_text())
    data.update(changes)
    return decide(json.dumps(data).encode(), POLICY)


async def test_escalation_plans_its_notices_once(ledger: SqlLedger) -> None:
    ingest = Ingest(ledger)
    report = await ingest.apply([sample("escalated_m1_cn.json")], NOW)
    assert (report.new_events, report.notices) == (1, 2)
    again = await ingest.apply([sample("escalated_m1_cn.json")], NOW)
    assert (again.new_events, again.duplicates, again.notices) == (0, 1, 0)
    assert await ledger.counts_by_state() == {"waiting": 2}


async def test_only_new_events_are_handed_on_and_they_equal_what_the_ledger_keeps(
        ledger: SqlLedger) -> None:
    from service.compose import EventCache
    from service.events import stored_event

    ingest = Ingest(ledger)
    first = sample("escalated_m1_cn.json")
    report = await ingest.apply([first], NOW)
    assert report.recorded == [first.event]
    # the same id again with other content: the ledger keeps the first, and so must the cache
    again = await ingest.apply([sample("escalated_m1_cn.json", context={"x": "y"})], NOW)
    assert again.recorded == []
    cache = EventCache(ledger)
    cache.remember(report.recorded + again.recorded)
    event_id = first.event.event_id
    kept = stored_event((await ledger.event_bodies([event_id]))[event_id])
    assert (await cache.load([event_id]))[event_id] == kept == first.event


async def test_a_due_notice_is_claimed_by_one_owner_only(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    first = await ledger.claim("a", NOW, 10, 60)
    assert len(first) == 2 and all(n["attempts"] == 1 for n in first)
    assert await ledger.claim("b", NOW, 10, 60) == []
    expired = await ledger.claim("b", NOW + timedelta(seconds=61), 10, 60)
    assert {n["notice_id"] for n in expired} == {n["notice_id"] for n in first}
    assert all(n["attempts"] == 2 for n in expired)


async def test_a_lapsed_lease_is_renewed_until_another_owner_claims_it(
        ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    notice = (await ledger.claim("a", NOW, 1, 60))[0]
    lapsed = NOW + timedelta(seconds=61)
    # nobody took it: still a's, and renewing it keeps another owner from claiming it
    assert await ledger.renew_lease(notice["notice_id"], "a", lapsed, 60)
    assert notice["notice_id"] not in {n["notice_id"] for n in await ledger.claim(
        "b", lapsed + timedelta(seconds=1), 10, 60)}
    # once b has taken it over, a's renewal fails and a must not send
    taken = await ledger.claim("b", lapsed + timedelta(seconds=61), 10, 60)
    assert notice["notice_id"] in {n["notice_id"] for n in taken}
    assert not await ledger.renew_lease(notice["notice_id"], "a", lapsed, 60)
    assert await ledger.renew_lease(notice["notice_id"], "b", lapsed, 60)


async def test_two_relays_on_postgresql_publish_each_outcome_once(ledger: SqlLedger) -> None:
    from service.ledger.pending import relay_pending

    if ledger.dialect != "postgresql":
        pytest.skip("a SQLite ledger serves one worker, so one relay")
    await Ingest(ledger).apply([sample("escalated_m1_cn.json", event_id=f"evt-relay-{i}")
                                for i in range(10)], NOW)
    for notice in await ledger.claim("a", NOW, 100, 60):
        assert await ledger.finish(notice, "sent", NOW, owner="a", provider="x",
                                   provider_id=notice["notice_id"])
    published: list[int] = []

    async def slow_broker(rows: list[tuple[int, str]]) -> None:
        await asyncio.sleep(0.05)  # the confirms take a while: the other relay reads meanwhile
        published.extend(row_id for row_id, _ in rows)

    async def relay() -> None:
        while await relay_pending(ledger, 3, slow_broker):
            pass

    await asyncio.gather(relay(), relay())
    assert len(published) == 20 and len(set(published)) == 20
    assert await ledger.unpublished(100) == []


async def test_finishing_records_one_outcome_and_needs_the_lease(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    notice = (await ledger.claim("a", NOW, 1, 60))[0]
    assert not await ledger.finish(notice, "sent", NOW, owner="b", provider="x", provider_id="1")
    assert await ledger.finish(notice, "sent", NOW, owner="a", provider="x", provider_id="1")
    assert not await ledger.finish(notice, "sent", NOW, owner="a")
    rows = await ledger.unpublished(10)
    assert len(rows) == 1
    outcome = json.loads(rows[0][1])
    assert outcome["schema"] == "dunning.outcome/v1"
    assert (outcome["status"], outcome["provider_id"], outcome["attempt"]) == ("sent", "1", 1)
    await ledger.mark_published([rows[0][0]])
    assert await ledger.unpublished(10) == []


async def test_retry_later_makes_the_notice_due_again_later(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json", channels=["sms"])], NOW)
    notice = (await ledger.claim("a", NOW, 1, 60))[0]
    later = NOW + timedelta(seconds=30)
    assert await ledger.retry_later(notice, later, NOW, reason="twilio_503", owner="a")
    assert await ledger.claim("a", NOW + timedelta(seconds=29), 1, 60) == []
    assert len(await ledger.claim("a", later, 1, 60)) == 1
    assert await ledger.unpublished(10) == []  # a retry is recorded but is no outcome


async def test_payment_cancels_earlier_escalations_and_thanks_the_debtor(ledger: SqlLedger) -> None:
    ingest = Ingest(ledger)
    await ingest.apply([sample("escalated_m1_cn.json")], NOW)
    later = sample("escalated_m1_cn.json", event_id="evt-later",
                   occurred_at="2026-11-28T21:00:00+08:00")
    await ingest.apply([later], NOW)
    report = await ingest.apply([sample("payment_received.json")], NOW)
    assert (report.cancelled, report.notices) == (2, 2)
    notices = await ledger.notices_of_account("CC-6222-0001")
    states = {(n["event_id"], n["channel"]): n["state"] for n in notices}
    assert states[("evt-cn-0001", "sms")] == "cancelled"
    assert states[("evt-later", "sms")] == "waiting"
    thanks = [n for n in notices if n["stage"] == "on_payment"]
    assert {n["debtor_id"] for n in thanks} == {"D-1001"}
    reasons = {json.loads(body)["reason"] for _, body in await ledger.unpublished(10)}
    assert reasons == {"payment_received"}


async def test_hold_cancels_waiting_notices_until_released(ledger: SqlLedger) -> None:
    ingest = Ingest(ledger)
    await ingest.apply([sample("escalated_early_us.json"), sample("hold_dispute.json")], NOW)
    assert await ledger.counts_by_state() == {"cancelled": 2}
    assert await ledger.active_holds(["CC-4111-0042"]) == {"CC-4111-0042": "dispute"}
    release = json.loads((SAMPLES / "hold_dispute.json").read_text())
    release.update(event_id="evt-release", type="account.hold_released",
                   occurred_at="2026-11-30T09:00:00-05:00")
    await ingest.apply([decide(json.dumps(release).encode(), POLICY)], NOW)
    assert await ledger.active_holds(["CC-4111-0042"]) == {}


async def test_opt_outs_are_kept_per_channel_and_destination(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("opted_out.json")], NOW)
    pairs = [("sms", "+12025550143"), ("email", "+12025550143")]
    assert await ledger.opted_out(pairs) == {("sms", "+12025550143")}


async def test_release_gives_back_unstarted_claims(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    await ledger.claim("a", NOW, 10, 60)
    assert await ledger.release("a", NOW) == 2
    again = await ledger.claim("b", NOW, 10, 60)
    assert [n["attempts"] for n in again] == [1, 1]


async def test_concurrent_claims_never_share_a_notice(ledger: SqlLedger) -> None:
    events = [sample("escalated_m1_cn.json", event_id=f"evt-{i}") for i in range(50)]
    await Ingest(ledger).apply(events, NOW)
    results = await asyncio.gather(*(ledger.claim(f"w{i}", NOW, 7, 60) for i in range(8)))
    ids = [n["notice_id"] for batch in results for n in batch]
    assert len(ids) == len(set(ids)) == 56


async def test_times_come_back_aware_in_utc(ledger: SqlLedger) -> None:
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    notice = (await ledger.notices_of_account("CC-6222-0001"))[0]
    assert notice["due_at"] == NOW and notice["due_at"].utcoffset() == timedelta(0)
    # 09:30 in Shanghai is 01:30 UTC
    assert notice["escalation_at"] == datetime(2026, 11, 28, 1, 30, tzinfo=UTC)


async def test_a_version_1_ledger_is_migrated_forward(ledger: SqlLedger) -> None:
    from service.ledger.schema import SCHEMA_VERSION

    def first_release(conn: Connection) -> None:  # make it look like the first release's
        for name in ("ix_notices_debtor_contact", "ix_notices_account_contact",
                     "ix_notices_destination_contact", "ix_notices_provider_id"):
            conn.execute(text(f"DROP INDEX {name}"))
        for column in ("destination", "contact_at", "delivery_status", "conversation"):
            conn.execute(text(f"ALTER TABLE notices DROP COLUMN {column}"))
        conn.execute(text("UPDATE dunning_meta SET value = '1' WHERE key = 'schema_version'"))

    await ledger.write(first_release)
    await ledger.create()
    await ledger.create()  # idempotent
    await Ingest(ledger).apply([sample("escalated_m1_cn.json")], NOW)
    notice = (await ledger.claim("a", NOW, 1, 60))[0]
    assert notice["contact_at"] is None and notice["conversation"] is False
    version = await ledger.read(lambda conn: conn.execute(text(
        "SELECT value FROM dunning_meta WHERE key = 'schema_version'")).scalar())
    assert version == str(SCHEMA_VERSION) == "3"


async def test_a_version_2_ledger_gets_the_destination_index(ledger: SqlLedger) -> None:
    def second_release(conn: Connection) -> None:
        conn.execute(text("DROP INDEX ix_notices_destination_contact"))
        conn.execute(text("UPDATE dunning_meta SET value = '2' WHERE key = 'schema_version'"))

    def index_names(conn: Connection) -> set[str]:
        return {index["name"] for index in inspect(conn).get_indexes("notices")}

    await ledger.write(second_release)
    assert "ix_notices_destination_contact" not in await ledger.read(index_names)
    await ledger.create()
    assert "ix_notices_destination_contact" in await ledger.read(index_names)


async def test_the_contact_history_of_a_batch_is_three_index_lookups(tmp_path: Path) -> None:
    """Not a walk over every notice ever sent, which grows with the ledger."""
    async with make_ledger("sqlite", tmp_path) as ledger:
        # a batch's worth: with more than a few values, SQLite preferred walking the state
        params = {"debtors": [f"D{i}" for i in range(16)],
                  "accounts": [f"A{i}" for i in range(16)],
                  "destinations": [f"+86138001380{i:02d}" for i in range(32)], "since": NOW}

        def plan(conn: Connection) -> list[str]:
            sql, values = direct.compiled(_HISTORY, conn.dialect, params).bind(params)
            return [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                           tuple(values))]

        steps = await ledger.read(plan)
    lookups = [step for step in steps if step.startswith("SEARCH notices")]
    assert [step.split(" USING INDEX ")[1].split(" ")[0] for step in lookups] == [
        "ix_notices_debtor_contact", "ix_notices_account_contact",
        "ix_notices_destination_contact"], steps


async def test_waiting_notices_are_counted_by_how_soon_they_are_due(ledger: SqlLedger) -> None:
    """Each waiting notice in one bucket, a due time on a bucket's edge in the nearer one."""
    due = {"overdue": NOW - timedelta(hours=3), "now": NOW,
           "in 30 s": NOW + timedelta(seconds=30), "in 1 min": NOW + timedelta(minutes=1),
           "in 61 s": NOW + timedelta(seconds=61), "in 1 h": NOW + timedelta(hours=1),
           "in 5 h": NOW + timedelta(hours=5), "in 1 day": NOW + timedelta(days=1),
           "in 1 day 1 µs": NOW + timedelta(days=1, microseconds=1),
           "in 40 days": NOW + timedelta(days=40)}
    rows = [notice_row(f"n-{i}", at, escalation_at=NOW, created_at=NOW, updated_at=NOW)
            for i, at in enumerate(due.values())]
    # not waiting, so in no bucket however due
    rows += [row | {"notice_id": f"{row['notice_id']}-{state}", "state": state}
             for state in ("claimed", "sent") for row in rows[:2]]
    await ledger.execute(insert(notices), rows)
    assert await waiting_by_bucket(ledger, NOW) == {"due": 2, "1m": 2, "1h": 2, "1d": 2,
                                                    "later": 2}
    assert await waiting_by_bucket(ledger, NOW + timedelta(days=100)) == {
        "due": 10, "1m": 0, "1h": 0, "1d": 0, "later": 0}


async def test_the_waiting_count_reads_the_due_index_alone(tmp_path: Path) -> None:
    """Every bucket a range of the (state, due_at) index, never a walk of the table."""
    async with make_ledger("sqlite", tmp_path) as ledger:
        def plan(conn: Connection) -> list[str]:
            sql, values = direct.compiled(WAITING_COUNTS, conn.dialect, {}).bind(edges(NOW))
            return [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                           tuple(values))]

        steps = await ledger.read(plan)
    searches = [step for step in steps if "notices" in step]
    assert len(searches) == 5, steps
    assert all(step.startswith("SEARCH notices USING COVERING INDEX ix_notices_state_due")
               for step in searches), steps
