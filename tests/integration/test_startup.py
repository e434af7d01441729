"""A missing server is one line naming the setting to fix, and a non-zero exit within 20 s."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.worker import WorkerProcess, free_port, unique_prefix


def run_worker(tmp_path: Path, **settings: str) -> tuple[int, str, float]:
    worker = WorkerProcess(tmp_path, unique_prefix(), **settings)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "service", "worker"], env=worker.env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    return result.returncode, result.stderr, time.monotonic() - started


def test_an_unreachable_broker_names_dunning_amqp_url(tmp_path: Path) -> None:
    code, stderr, took_s = run_worker(
        tmp_path, DUNNING_AMQP_URL=f"amqp://guest:secret@127.0.0.1:{free_port()}/")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and took_s < 20
    assert len(lines) == 1 and "DUNNING_AMQP_URL" in lines[0], stderr
    assert "secret" not in stderr and "Traceback" not in stderr


def test_an_unreachable_database_names_dunning_database_url(tmp_path: Path) -> None:
    code, stderr, took_s = run_worker(
        tmp_path, DUNNING_DATABASE_URL=f"postgresql://nobody:pw@127.0.0.1:{free_port()}/x")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and took_s < 20
    assert len(lines) == 1 and "DUNNING_DATABASE_URL" in lines[0], stderr
    assert "pw@" not in stderr


def test_a_missing_policy_names_the_setting(tmp_path: Path) -> None:
    code, stderr, _ = run_worker(tmp_path, DUNNING_TEMPLATES_DIR=str(tmp_path / "nowhere"))
    assert code != 0 and "DUNNING_TEMPLATES_DIR" in stderr and "Traceback" not in stderr
