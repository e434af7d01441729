"""The `dunning` commands that talk to the broker or print: publish, dead, schema, render."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.worker import AMQP_URL, ROOT, SAMPLES, Broker, WorkerProcess, names, sample


def dunning(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True,
                          text=True, timeout=60, env=env, input=stdin, check=False,
                          cwd=ROOT)


def env_for(broker: Broker, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env.update(broker.names, DUNNING_AMQP_URL=AMQP_URL, **extra)
    return env


async def test_publish_takes_json_lines_and_reports_bad_lines(broker: Broker,
                                                              tmp_path: Path) -> None:
    lines = [json.dumps(sample("escalated_m1_cn.json")), "{not json",
             json.dumps(sample("hold_dispute.json", reason="vacation")),
             json.dumps(sample("payment_received.json"))]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = dunning("publish", str(path), env=env_for(broker))
    assert result.returncode == 0, result.stderr
    assert f"{path}:2: skipped, invalid_json" in result.stderr
    assert f"{path}:3: skipped, invalid_event" in result.stderr and "reason" in result.stderr
    assert "published 2 event(s), skipped 2 invalid" in result.stderr
    queue = await broker.channel.declare_queue(broker.names["DUNNING_QUEUE"], durable=True,
                                               arguments={"x-queue-type": "quorum"})
    got = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        got.append((message.routing_key, json.loads(message.body)["event_id"]))
    assert got == [("delinquency.escalated", "evt-cn-0001"), ("payment.received", "evt-cn-0003")]


async def test_publish_reads_an_array_from_stdin(broker: Broker) -> None:
    events = [sample("hold_dispute.json"), sample("opted_out.json")]
    result = dunning("publish", "-", env=env_for(broker), stdin=json.dumps(events))
    assert result.returncode == 0 and "published 2 event(s)" in result.stderr


async def test_dead_letters_can_be_listed_and_replayed(broker: Broker, tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, broker.names["DUNNING_EXCHANGE"].removesuffix(".events"))
    worker.start()
    try:
        event = sample("escalated_m1_cn.json", stage="m9", event_id="evt-m9")
        await broker.publish(event)
        listed: list[dict[str, Any]] = []
        for _ in range(50):
            result = dunning("dead", "list", env=env_for(broker))
            listed = [json.loads(line) for line in result.stdout.splitlines()]
            if listed:
                break
        assert listed[0]["event_id"] == "evt-m9" and listed[0]["error"] == "unknown_stage"
        again = dunning("dead", "list", env=env_for(broker)).stdout.splitlines()
        assert len(again) == 1  # listing takes nothing away
        replay = dunning("dead", "replay", "--id", "evt-m9", env=env_for(broker))
        assert replay.returncode == 0 and "replayed 1" in replay.stderr
        await broker.dead_letters(1)  # unknown stage still: it comes back, with its reason
    finally:
        assert worker.terminate() == 0


def test_schema_prints_both_json_schemas() -> None:
    event = json.loads(dunning("schema", "event").stdout)
    outcome = json.loads(dunning("schema", "outcome").stdout)
    assert event["$id"] == "dunning.event/v1"
    assert outcome["$id"] == "dunning.outcome/v1"
    assert "schema" in outcome["required"] and "status" in outcome["properties"]


def test_render_previews_an_sms_with_its_segment_count() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("DUNNING_")}
    env["DUNNING_TEMPLATES_DIR"] = str(ROOT / "templates")
    result = dunning("render", "--event", str(SAMPLES / "escalated_m1_cn.json"), "--template",
                     "cn_m1", "--channel", "sms", env=env)
    assert result.returncode == 0, result.stderr
    assert "1,830.00" in result.stdout and "UCS-2" in result.stdout


def test_publish_without_a_broker_is_one_line(tmp_path: Path) -> None:
    env = env_for_names(tmp_path)
    result = dunning("publish", str(SAMPLES / "hold_dispute.json"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "DUNNING_AMQP_URL" in result.stderr


def env_for_names(tmp_path: Path) -> dict[str, str]:
    import os

    from tests.helpers.worker import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env.update(names("unused"), DUNNING_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
               DUNNING_STARTUP_TIMEOUT_S="3")
    return env
