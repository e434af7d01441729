"""Channel adapters: the port (``base``) and the ways of reaching a debtor that implement it.

``ADAPTERS`` is the one explicit table of adapter classes by key; a bank adds its own by
declaring an entry point in the ``dunning.channels`` group of its package::

    [project.entry-points."dunning.channels"]
    letter_printhouse = "bank_adapters.printhouse:PrintHouseLetterAdapter"

and ``load_entry_point_adapters()`` registers those. The adapters themselves are imported
lazily, on first access: importing ``service.channels.base`` (the core does) never pulls in
a vendor SDK.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from service.channels.base import (
    CHANNELS,
    Address,
    Channel,
    ChannelAdapter,
    DeliveryError,
    PermanentDeliveryError,
    Receipt,
    RenderedNotice,
    TransientDeliveryError,
    UnknownOutcomeError,
    message_id_for,
)

if TYPE_CHECKING:
    from service.channels.email import SmtpEmailAdapter, build_message
    from service.channels.letter import SpoolLetterAdapter
    from service.channels.memory import MemoryAdapter
    from service.channels.outbox import OutboxAdapter
    from service.channels.printmail import PrintMailLetterAdapter
    from service.channels.sms import TwilioSmsAdapter
    from service.channels.voice import TwilioVoiceAdapter

    ADAPTERS: dict[str, type]

ENTRY_POINT_GROUP = "dunning.channels"

# key -> "module:Class"; the key is what configuration and bootstrap name an adapter by
_BUILT_IN = {
    "smtp": "service.channels.email:SmtpEmailAdapter",
    "twilio_sms": "service.channels.sms:TwilioSmsAdapter",
    "twilio_voice": "service.channels.voice:TwilioVoiceAdapter",
    "spool_letter": "service.channels.letter:SpoolLetterAdapter",
    "printmail_letter": "service.channels.printmail:PrintMailLetterAdapter",
    "outbox": "service.channels.outbox:OutboxAdapter",
    "memory": "service.channels.memory:MemoryAdapter",
}
_LAZY_NAMES = {
    "SmtpEmailAdapter": "service.channels.email",
    "build_message": "service.channels.email",
    "TwilioSmsAdapter": "service.channels.sms",
    "TwilioVoiceAdapter": "service.channels.voice",
    "SpoolLetterAdapter": "service.channels.letter",
    "PrintMailLetterAdapter": "service.channels.printmail",
    "OutboxAdapter": "service.channels.outbox",
    "MemoryAdapter": "service.channels.memory",
}

__all__ = [
    "ADAPTERS",
    "CHANNELS",
    "ENTRY_POINT_GROUP",
    "Address",
    "Channel",
    "ChannelAdapter",
    "DeliveryError",
    "MemoryAdapter",
    "OutboxAdapter",
    "PermanentDeliveryError",
    "PrintMailLetterAdapter",
    "Receipt",
    "RenderedNotice",
    "SmtpEmailAdapter",
    "SpoolLetterAdapter",
    "TransientDeliveryError",
    "TwilioSmsAdapter",
    "TwilioVoiceAdapter",
    "UnknownOutcomeError",
    "build_message",
    "load_entry_point_adapters",
    "message_id_for",
]


def _import(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _registry() -> dict[str, type]:
    registry: dict[str, type] | None = globals().get("ADAPTERS")
    if registry is None:
        registry = {key: _import(path) for key, path in _BUILT_IN.items()}
        globals()["ADAPTERS"] = registry
    return registry


def __getattr__(name: str) -> Any:
    if name == "ADAPTERS":
        return _registry()
    if name in _LAZY_NAMES:
        value = _import(f"{_LAZY_NAMES[name]}:{name}")
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _looks_like_adapter(candidate: object) -> bool:
    return isinstance(candidate, type) and all(
        inspect.iscoroutinefunction(getattr(candidate, method, None))
        for method in ("send", "aclose")
    )


def load_entry_point_adapters(group: str = ENTRY_POINT_GROUP) -> dict[str, type]:
    """Register the adapters installed packages declare in ``group``; return those found.

    An entry point may not replace a built-in or another package's adapter under the same
    key (``ValueError``), and must name a class with ``async send`` and ``async aclose``
    (``TypeError``).
    """
    registry = _registry()
    found: dict[str, type] = {}
    for point in entry_points(group=group):
        candidate = point.load()
        if not _looks_like_adapter(candidate):
            raise TypeError(f"entry point {point.name!r} ({point.value}) is not a channel adapter")
        if registry.get(point.name, candidate) is not candidate or point.name in found:
            raise ValueError(f"entry point {point.name!r} would replace another adapter")
        found[point.name] = candidate
    registry.update(found)
    return found
