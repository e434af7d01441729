"""Templates: one cached Jinja2 environment, locale-aware filters, locale fallback, SMS segments.

Pure apart from reading template files (Jinja2 caches what it compiled). Rendering is
synchronous on purpose: ``render_async`` costs about half again as much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context

from service.events import decimal_amount

# which template files make up a notice on each channel, by part name
CHANNEL_FILES: dict[str, dict[str, str]] = {
    "email": {"subject": "email.subject.j2", "html": "email.html.j2", "text": "email.txt.j2"},
    "sms": {"text": "sms.txt.j2"},
    "voice": {"text": "voice.txt.j2"},
    "letter": {"html": "letter.html.j2"},
}

# GSM 03.38 basic set and the extension set (each extension character costs two septets)
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


class TemplateMissing(Exception):
    """No file for that template, channel and locale (nor any fallback locale)."""


@dataclass(frozen=True, slots=True)
class SmsSegments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


def sms_segments(text: str) -> SmsSegments:
    """How many SMS parts a body needs: GSM-7 160/153, else UCS-2 70/67."""
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENSION for ch in text):
        units = sum(2 if ch in _GSM_EXTENSION else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 1 if units <= single else -(-units // multi)
    return SmsSegments(encoding, units, segments)


def babel_locale(locale: str) -> str:
    return locale.replace("-", "_")


@lru_cache(maxsize=64)
def _parsed_locale(locale: str) -> Locale:
    """Babel's locale for ``zh-CN`` (parsed once: parsing costs more than formatting)."""
    return Locale.parse(babel_locale(locale))


def locale_chain(locale: str, default_locale: str) -> list[str]:
    """``zh-CN`` -> ``zh-CN``, ``zh``, then the policy's default locale."""
    chain = [locale]
    language = locale.split("-")[0]
    if language != locale:
        chain.append(language)
    if default_locale not in chain:
        chain.append(default_locale)
    return chain


@pass_context
def _money(ctx: Context, value: Any, currency: str | None = None) -> str:
    if value is None:
        return ""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return _formatted_money(str(amount), currency or "USD", ctx["notice"]["locale"])


@lru_cache(maxsize=4096)
def _formatted_money(amount: str, currency: str, locale: str) -> str:
    """Babel's formatting (about 0.1 ms), remembered: a notice shows its amounts in every part
    (an email's text and HTML, say) and the next notice often owes the same. Keyed by the
    amount's text, so that 0 and -0 stay apart."""
    return format_currency(Decimal(amount), currency, locale=_parsed_locale(locale))


def _decimal(value: Any) -> Decimal:
    """An amount as a Decimal, for exact arithmetic in a template (Jinja has only float)."""
    return value if isinstance(value, Decimal) else decimal_amount(str(value).strip())


@pass_context
def _date(ctx: Context, value: Any, form: str = "long") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = date.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.date()
    return _formatted_date(value, form, ctx["notice"]["locale"])


@lru_cache(maxsize=1024)
def _formatted_date(value: date, form: str, locale: str) -> str:
    return format_date(value, format=form, locale=_parsed_locale(locale))


def mask(value: Any, keep: int = 4) -> str:
    """Keep the last ``keep`` characters; the rest become ``*``."""
    text = "" if value is None else str(value)
    if len(text) <= keep:
        return "*" * len(text)
    return "*" * (len(text) - keep) + text[-keep:]


_DICT_ATTRIBUTES = frozenset(dir(dict))


class NoticeEnvironment(Environment):
    """Jinja2's environment, looking up ``account.amount_due`` in a dict without an exception.

    Jinja2 resolves ``x.name`` as ``getattr(x, "name")`` and, when that raises, as
    ``x["name"]``. The variables of a notice are plain dicts, so every such lookup (about 80
    a notice) raised and caught an ``AttributeError`` first. For a plain dict and a name that
    is not one of a dict's own attributes (``items``, ``get``…) that ``getattr`` always
    raises, so the item is looked up at once: the same result, a tenth of the cost.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def make_environment(templates_dir: Path) -> Environment:
    env = NoticeEnvironment(
        loader=FileSystemLoader(str(templates_dir)),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=2000,
    )
    env.filters["money"] = _money
    env.filters["decimal"] = _decimal
    env.filters["date"] = _date
    env.filters["mask"] = mask
    return env


@dataclass(slots=True)
class RenderInput:
    """Everything a notice's templates may use (see README, "Adding a template")."""

    notice_id: str
    channel: str
    template: str
    locale: str
    stage: str
    account: dict[str, Any]
    debtor: dict[str, Any]
    event: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    sender: dict[str, str] = field(default_factory=dict)
    today: date | None = None

    def variables(self, locale: str) -> dict[str, Any]:
        return {
            "account": self.account,
            "debtor": self.debtor,
            "stage": self.stage,
            "event": self.event,
            "context": self.context,
            "sender": self.sender,
            "notice": {"notice_id": self.notice_id, "channel": self.channel,
                       "template": self.template, "locale": locale},
            "today": self.today or date.today(),
        }


@dataclass(frozen=True, slots=True)
class Rendered:
    locale: str
    parts: dict[str, str]


class Renderer:
    """Renders the files of one notice; the environment and the lookups are cached."""

    def __init__(self, templates_dir: Path, default_locale: str = "en-US") -> None:
        self.templates_dir = templates_dir
        self.default_locale = default_locale
        self.env = make_environment(templates_dir)
        self._resolve = lru_cache(maxsize=4096)(self._resolve_uncached)

    def _resolve_uncached(self, template: str, channel: str, locale: str) -> str | None:
        """The first locale of the fallback chain that has every file of the channel."""
        files = CHANNEL_FILES[channel].values()
        for candidate in locale_chain(locale, self.default_locale):
            folder = self.templates_dir / template / candidate
            if all((folder / name).is_file() for name in files):
                return candidate
        return None

    def resolve_locale(self, template: str, channel: str, locale: str) -> str:
        found = self._resolve(template, channel, locale)
        if found is None:
            raise TemplateMissing(
                f"template {template!r} has no {channel} files for locale {locale} "
                f"(looked in {', '.join(locale_chain(locale, self.default_locale))})")
        return found

    def render(self, data: RenderInput) -> Rendered:
        locale = self.resolve_locale(data.template, data.channel, data.locale)
        variables = data.variables(locale)
        parts = {}
        for part, filename in CHANNEL_FILES[data.channel].items():
            name = f"{data.template}/{locale}/{filename}"
            try:
                text = self.env.get_template(name).render(variables)
            except TemplateNotFound as exc:
                raise TemplateMissing(f"{name}: includes {exc.name}, which does not exist") \
                    from None
            parts[part] = text.strip() if part != "html" else text
        if "subject" in parts:
            parts["subject"] = " ".join(parts["subject"].split())
        return Rendered(locale, parts)
