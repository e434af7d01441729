"""Prometheus metrics, in one registry. Names carry their units (``_seconds``, ``_total``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
