"""Prometheus metrics, in one registry. Names carry their units (``_seconds``, ``_total``)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# what the library's default registry carries: the process's CPU, memory and open files
# (``process_*``, from /proc), the interpreter's garbage collections (``python_gc_*``) and
# its version (``python_info``)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

EVENTS_CONSUMED = Counter("dunning_events_consumed_total", "Events taken from the queue",
                          registry=REGISTRY)
EVENTS_DEAD = Counter("dunning_events_dead_lettered_total", "Events moved to the dead-letter "
                      "queue, by error code", ["code"], registry=REGISTRY)
NOTICES = Counter("dunning_notices_total", "Notice decisions by channel, status and reason",
                  ["channel", "status", "reason"], registry=REGISTRY)
SEND_SECONDS = Histogram("dunning_send_seconds", "Provider call latency per channel",
                         ["channel"], registry=REGISTRY,
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PROVIDER_ERRORS = Counter("dunning_provider_errors_total", "Errors raised by channel adapters",
                          ["channel", "kind"], registry=REGISTRY)
CONSUMER_ATTACHED = Gauge("dunning_consumer_attached", "1 while the queue consumer is attached",
                          registry=REGISTRY)
RATE_LIMIT_WAITS = Counter("dunning_rate_limit_waits_total", "Sends that waited for a rate-limit "
                           "slot, or were put back because none was near", ["channel", "kind"],
                           registry=REGISTRY)
RATE_LIMIT_DEGRADED = Gauge("dunning_rate_limit_degraded", "1 while shared (Redis) pacing is "
                            "unavailable and this worker paces alone", registry=REGISTRY)
BROKER_RECONNECTS = Counter("dunning_broker_reconnects_total", "Reconnections to RabbitMQ",
                            registry=REGISTRY)
LEDGER_ERRORS = Counter("dunning_ledger_errors_total", "Ledger (or, for relay, broker) operations "
                        "that failed and are retried",
                        ["operation"], registry=REGISTRY)
CIRCUIT_OPEN = Gauge("dunning_circuit_open", "1 while a channel's circuit breaker is open "
                     "(its provider is failing and is only probed)", ["channel"],
                     registry=REGISTRY)
CIRCUIT_TRANSITIONS = Counter("dunning_circuit_transitions_total", "Circuit breaker state "
                              "changes", ["channel", "state"], registry=REGISTRY)
RECONCILED = Counter("dunning_reconciled_total", "Notices whose earlier attempt had an unknown "
                     "outcome, by what reconciliation found", ["channel", "found"],
                     registry=REGISTRY)
_LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
LEDGER_WAIT_SECONDS = Histogram("dunning_ledger_wait_seconds", "How long a ledger transaction "
                                "waited for a ledger thread (queueing: the ledger is saturated "
                                "when this grows)", registry=REGISTRY, buckets=_LEDGER_BUCKETS)
LEDGER_BUSY_SECONDS = Histogram("dunning_ledger_transaction_seconds", "How long a ledger "
                                "transaction took on its thread, commit included",
                                registry=REGISTRY, buckets=_LEDGER_BUCKETS)
WAITING = Gauge("dunning_waiting_notices", "Notices waiting in the ledger, by when they are due "
                "(due now, within a minute, an hour, a day, later)", ["due"], registry=REGISTRY)
