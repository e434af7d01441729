"""Settings that work but weaken a guarantee are named in the start-up log."""

from __future__ import annotations

from service.bootstrap import settings_problems
from service.config import Settings


def test_the_default_lease_outlasts_a_send() -> None:
    assert settings_problems(Settings()) == []


def test_a_lease_shorter_than_a_provider_call_is_named() -> None:
    problems = settings_problems(Settings(lease_s=15, provider_timeout_s=15))
    assert [code for code, _ in problems] == ["lease_shorter_than_a_send"]
    assert "DUNNING_LEASE_S (15 s)" in problems[0][1]
    assert settings_problems(Settings(lease_s=20.5, provider_timeout_s=15)) == []
