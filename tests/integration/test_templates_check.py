"""`dunning templates check` on the shipped templates and on a broken copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "templates", "check", str(directory)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_shipped_templates_pass() -> None:
    result = check(ROOT / "templates")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def test_an_undefined_variable_fails_naming_the_file_and_the_variable(tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    sms = next(copy.glob("*/zh-CN/sms.txt.j2"))
    sms.write_text(sms.read_text(encoding="utf-8") + "{{ account.overdue_fee }}", encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1
    relative = str(sms.relative_to(copy))
    line = next(line for line in result.stdout.splitlines() if relative in line)
    assert "undefined variable" in line and "overdue_fee" in line


def test_an_sms_over_its_segment_budget_fails(tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    sms = next(copy.glob("*/en-US/sms.txt.j2"))
    sms.write_text("x" * 500, encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1
    assert "segments" in result.stdout and str(sms.relative_to(copy)) in result.stdout


def test_a_policy_step_without_its_template_fails(tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    policy = copy / "policy.yaml"
    policy.write_text(policy.read_text(encoding="utf-8").replace(
        "stages:", "stages:\n  m0:\n    steps:\n      - {channel: sms, template: not_written}", 1),
        encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1 and "not_written" in result.stdout
