"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from service.circuit import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_n_failures_in_a_row_and_probes_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("sms", failures_to_open=3, open_s=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow() == (True, 0.0)
    breaker.record_failure()
    assert breaker.state == "open"
    allowed, wait_s = breaker.allow()
    assert not allowed and wait_s == 10
    clock.now = 10
    assert breaker.allow() == (True, 0.0) and breaker.state == "half_open"
    assert not breaker.allow()[0]  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() == (True, 0.0)


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("email", failures_to_open=1, open_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5
    assert breaker.allow()[0]
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now = 9
    assert breaker.allow() == (False, 1.0)
    clock.now = 10
    assert breaker.allow()[0]


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker("sms", failures_to_open=2, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
