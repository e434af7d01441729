"""Wire models of the events (CONTRACT.md §3, schema ``dunning.event/v1``) and their decoding.

``parse_event(body)`` turns the bytes of one AMQP message into one typed event or raises
:class:`BadEvent` with the dead-letter code and a sentence naming the field (§5).
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

MAX_EVENT_BYTES = 256 * 1024
MAX_CONTEXT_KEYS = 32

HOLD_REASONS = ("dispute", "cease_communication", "attorney", "bankruptcy", "deceased", "hardship")


class BadEvent(Exception):
    """An event that can never be processed: it goes to the dead-letter queue."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def decimal_amount(text: str) -> Decimal:
    """A decimal string as a finite Decimal; ValueError naming the text otherwise."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a finite amount")
    return amount


def _money(value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError('money must be a decimal string such as "1830.00", not a JSON number')
    if isinstance(value, str):
        return decimal_amount(value)
    return value


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isalpha() or not value.isupper():
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$",
                    "description": "a decimal amount as a string, never a JSON number"}),
]
Currency = Annotated[str, AfterValidator(_currency)]
Text = Annotated[str, Field(min_length=1, max_length=512)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class Address(_Model):
    lines: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=8)
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = Field(default=None, min_length=2, max_length=2)


class Account(_Model):
    account_id: Text
    product: str = "credit_card"
    card_last4: str | None = Field(default=None, pattern=r"^[0-9]{4}$")
    currency: Currency
    balance: Money | None = None
    amount_due: Money
    minimum_payment: Money | None = None
    due_date: date | None = None
    days_past_due: int | None = Field(default=None, ge=0)


class Debtor(_Model):
    debtor_id: Text
    name: str = ""
    locale: str = Field(default="en-US", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    timezone: str | None = None
    email: str | None = None
    phone: str | None = None
    address: Address | None = None


class AccountRef(_Model):
    account_id: Text


class DebtorRef(_Model):
    debtor_id: Text


class _Event(_Model):
    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    occurred_at: AwareDatetime


def _flat_context(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_CONTEXT_KEYS:
        raise ValueError(f"context has {len(value)} keys; at most {MAX_CONTEXT_KEYS} are allowed")
    for key, item in value.items():
        if isinstance(item, (dict, list)):
            raise ValueError(f"context.{key} must be a plain value (context is a flat object)")
        if isinstance(item, float):
            raise ValueError(f"context.{key} is a JSON float; send amounts as decimal strings")
    return value


class Escalated(_Event):
    type: Literal["delinquency.escalated"]
    stage: Annotated[str, Field(min_length=1, max_length=64)]
    jurisdiction: str | None = None
    account: Account
    debtor: Debtor
    channels: list[Literal["email", "sms", "voice", "letter"]] | None = None
    context: Annotated[dict[str, Any], AfterValidator(_flat_context)] = Field(default_factory=dict)

    @property
    def ruling_jurisdiction(self) -> str | None:
        """The rule pack's key: the event's jurisdiction, else the address's country."""
        if self.jurisdiction:
            return self.jurisdiction
        address = self.debtor.address
        return address.country if address else None


class PaymentReceived(_Event):
    type: Literal["payment.received"]
    account: AccountRef
    amount: Money
    currency: Currency
    cures: bool = False


class Hold(_Event):
    type: Literal["account.hold"]
    account: AccountRef
    reason: Literal["dispute", "cease_communication", "attorney", "bankruptcy", "deceased", "hardship"]


class HoldReleased(_Event):
    type: Literal["account.hold_released"]
    account: AccountRef
    reason: Literal["dispute", "cease_communication", "attorney", "bankruptcy", "deceased", "hardship"]


class OptedOut(_Event):
    type: Literal["contact.opted_out"]
    debtor: DebtorRef
    channel: Literal["email", "sms", "voice", "letter"]
    destination: Annotated[str, Field(min_length=1, max_length=320)]


Event = Annotated[
    Escalated | PaymentReceived | Hold | HoldReleased | OptedOut, Field(discriminator="type")
]
EVENT_TYPES = ("delinquency.escalated", "payment.received", "account.hold",
               "account.hold_released", "contact.opted_out")
_EVENT_ADAPTER: TypeAdapter[Escalated | PaymentReceived | Hold | HoldReleased | OptedOut]
_EVENT_ADAPTER = TypeAdapter(Event)
AnyEvent = Escalated | PaymentReceived | Hold | HoldReleased | OptedOut


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity."""
    if len(body) > MAX_EVENT_BYTES:
        raise BadEvent("too_large", f"the event is {len(body)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise BadEvent("invalid_json", f"the body is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise BadEvent("invalid_json", f"the body is not valid JSON: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    if loc and loc[0] in EVENT_TYPES:
        loc = loc[1:]  # drop the discriminator tag pydantic puts first
    field = ".".join(loc) or "(the event)"
    message = error["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"field {field}: {message}{more}"


def validate_event(data: Any) -> AnyEvent:
    """Validate a decoded JSON value as an event."""
    if not isinstance(data, dict):
        raise BadEvent("invalid_event", f"an event must be a JSON object, not {type(data).__name__}")
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        raise BadEvent("unknown_type", f"field type: {kind!r} is not one of {', '.join(EVENT_TYPES)}")
    try:
        return _EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise BadEvent("invalid_event", _first_error(exc)) from None


def stored_event(body: str) -> AnyEvent:
    """An event as the ledger keeps it: validated at intake and written by pydantic, so it
    is read back in one step (pydantic parses the JSON itself)."""
    return _EVENT_ADAPTER.validate_json(body)


_NOT_JSON = (b"NaN", b"Infinity")  # constants pydantic's own parser might take


def parse_event(body: bytes) -> AnyEvent:
    """Bytes of one message -> one event, or :class:`BadEvent`.

    A well-formed event is parsed by pydantic straight from the bytes (half the cost of
    ``json.loads`` and validating the result); anything it rejects, and anything that
    could be read differently by the two, takes the step-by-step path, which names the
    problem exactly as before.
    """
    if len(body) <= MAX_EVENT_BYTES and not any(word in body for word in _NOT_JSON):
        try:
            return _EVENT_ADAPTER.validate_json(body)
        except ValidationError:
            pass
    return validate_event(decode_json(body))


def event_json_schema() -> dict[str, Any]:
    schema = _EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "dunning.event/v1"
    schema["title"] = "dunning.event/v1"
    return schema
