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


def test_a_us_sms_without_the_opt_out_line_fails_naming_the_file_and_the_rule(
        tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    sms = copy / "us_early" / "en-US" / "sms.txt.j2"
    sms.write_text("Your card ending {{ account.card_last4 }} is past due: "
                   "{{ account.amount_due | money(account.currency) }}.", encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "us_early/en-US/sms.txt.j2" in line)
    assert "opt_out" in line and "us.fdcpa.opt_out_notice" in line


def test_a_cn_letter_without_the_bank_contact_fails(tmp_path: Path) -> None:
    copy = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", copy)
    letter = copy / "cn_m3" / "zh-CN" / "letter.html.j2"
    letter.write_text("<p>{{ debtor.name }}：您的欠款为 "
                      "{{ account.amount_due | money(account.currency) }}。</p>", encoding="utf-8")
    result = check(copy)
    assert result.returncode == 1
    assert any("cn_m3/zh-CN/letter.html.j2" in line and "cn.bank_contact" in line
               for line in result.stdout.splitlines())
