"""`dunning bench --quick` completes and reports every figure (it asserts no speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.worker import AMQP_URL, ROOT

KEYS = {
    "raw_consume_ack_per_s", "raw_sdk_per_s", "raw_smtp_per_s", "intake_per_s", "intake_ratio",
    "dispatch_sms_per_s", "dispatch_sms_ratio", "dispatch_email_per_s", "dispatch_email_ratio",
    "e2e_per_s", "e2e_offered_per_s", "e2e_p50_ms", "e2e_p99_ms", "rss_idle_mb", "rss_peak_mb",
    "waiting_notices", "lag_dispatch_p99_ms", "lag_e2e_p99_ms", "scaling_one_per_s",
    "scaling_two_per_s", "scaling_ratio", "scaling_note", "targets", "all_targets_met",
    "sms_body_chars", "email_message_bytes", "e2e_cpu_ms_per_event",
    "e2e_half_cpu_ms_per_event", "e2e_half_cpu_percent",
    *(f"raw_{raw}_{when}_per_s" for raw in ("consume_ack", "sdk", "smtp")
      for when in ("before", "after")),
}


@pytest.mark.timeout(90)
def test_quick_bench_prints_the_table_and_a_json_line_with_every_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env.update({"DUNNING_AMQP_URL": AMQP_URL, "DUNNING_TEMPLATES_DIR": str(ROOT / "templates")})
    done = subprocess.run([sys.executable, "-m", "service", "bench", "--quick"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["measurement", "value"]
    assert any(line.startswith("3 dispatch sms") for line in lines)
    figures = json.loads(lines[-1])
    assert KEYS <= set(figures), KEYS - set(figures)
    assert set(figures["targets"]) == {"intake", "dispatch_sms", "dispatch_email", "e2e_p99",
                                       "loop_lag_p99", "rss"}
    assert figures["quick"] is True
    # the worker's CPU, read from /proc where the tests run: some, for every event
    assert figures["e2e_cpu_ms_per_event"] > 0 and figures["e2e_half_cpu_ms_per_event"] > 0
    assert 0 < figures["e2e_half_cpu_percent"] <= 100 * (os.cpu_count() or 1)
    assert any(line.startswith("4 worker CPU an event") for line in lines)
    for raw in ("consume_ack", "sdk", "smtp"):  # each stage's ceiling: the mean of two
        both = figures[f"raw_{raw}_before_per_s"], figures[f"raw_{raw}_after_per_s"]
        assert min(both) > 0
        assert figures[f"raw_{raw}_per_s"] == pytest.approx(sum(both) / 2, abs=0.02)
