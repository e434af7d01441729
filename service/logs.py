"""Structured logs (structlog): JSON off a terminal, console on one; personal data masked.

Every log line passes :func:`mask_personal_data`, which masks the values of keys that
hold personal data and any phone number or email address inside any string.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# keys whose values are personal data, whatever they look like
PERSONAL_KEYS = frozenset({
    "name", "debtor_name", "recipient_name", "email", "phone", "to", "from_", "destination",
    "address", "lines", "postal_code", "body", "text", "subject", "html",
})
# keys whose values are never personal data (ids and log plumbing)
SAFE_KEYS = frozenset({"timestamp", "level", "logger", "event_id", "notice_id", "channel"})
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# an international number (+ and 7-15 digits, maybe spaced) or a bare run of 10+ digits;
# timestamps and amounts have shorter digit groups and pass untouched
_PHONE = re.compile(r"(?<![\w+])\+\d(?:[ \-]?\d){6,14}(?!\d)|(?<![\w.])\d{10,}(?![\d.])")
_CJK_NAME_AFTER = re.compile(r"(name[\"']?\s*[:=]\s*[\"']?)([^\"',}\s]+)")


def mask_text(value: str) -> str:
    """Mask email addresses and phone numbers inside free text."""
    value = _EMAIL.sub(lambda m: "***@" + m.group(0).rsplit("@", 1)[1], value)
    value = _PHONE.sub(lambda m: "***" + m.group(0)[-2:], value)
    return _CJK_NAME_AFTER.sub(lambda m: m.group(1) + "***", value)


def mask_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: "***" for k in value}
    if isinstance(value, list | tuple):
        return ["***" for _ in value]
    text = str(value)
    if "@" in text:
        return "***@" + text.rsplit("@", 1)[1]
    return "***" + text[-2:] if len(text) > 6 and text[-2:].isdigit() else "***"


def mask_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key in SAFE_KEYS:
            continue
        if key in PERSONAL_KEYS:
            event_dict[key] = mask_value(value)
        elif isinstance(value, str):
            event_dict[key] = mask_text(value)
        elif isinstance(value, BaseException):
            event_dict[key] = mask_text(repr(value))
    return event_dict


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and route the standard library's logging through the same mask."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        mask_personal_data,
    ]
    renderer: Any = (structlog.processors.JSONRenderer(ensure_ascii=False) if use_json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
