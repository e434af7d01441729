"""`dunning bench`: throughput, latency, event-loop lag and memory of the worker, on loopback.

Everything it needs is started here and removed afterwards: an SMTP server (aiosmtpd) and a
Twilio-compatible responder in a process of their own (``responders``), temporary ledgers,
and queue and exchange names of its own on the configured RabbitMQ (``DUNNING_AMQP_URL``).
Every figure is compared with a ceiling measured in the same run (``ceilings``), because
absolute numbers drift with whatever else runs on the machine.

Modules: ``common`` (sizes, clock, events, lag monitor, RSS), ``responders`` (the SMTP and
Twilio stand-ins), ``ceilings`` (raw aio-pika, Twilio SDK, aiosmtplib), ``stages`` (intake and
dispatch in this process), ``e2e`` (the real worker as a subprocess: end to end, latency,
memory), ``scaling`` (one vs two workers on PostgreSQL), ``report`` and ``runner``.
"""

from __future__ import annotations

MISSING_EXTRA = ("dunning bench needs aiosmtpd for its local SMTP server: "
                 "pip install 'dunning[bench]' (or pip install -e '.[bench]')")


def missing_extra() -> str | None:
    """The install hint when the bench's extra is not installed, else None."""
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        return MISSING_EXTRA
    return None
