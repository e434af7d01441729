"""Outcomes (CONTRACT.md §4, schema ``dunning.outcome/v1``): the model, and the relay's message."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import AwareDatetime, BaseModel, ConfigDict

Status = Literal["sent", "deferred", "suppressed", "cancelled", "failed"]
SCHEMA: Literal["dunning.outcome/v1"] = "dunning.outcome/v1"


class Outcome(BaseModel):
    model_config = ConfigDict(frozen=True, title=SCHEMA)

    schema_: Literal["dunning.outcome/v1"] = SCHEMA
    event_id: str
    notice_id: str
    account_id: str
    debtor_id: str
    stage: str
    channel: Literal["email", "sms", "voice", "letter"]
    template: str
    locale: str
    status: Status
    reason: str | None = None
    provider: str | None = None
    provider_id: str | None = None
    not_before: AwareDatetime | None = None
    attempt: int
    at: AwareDatetime

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        data = {"schema": data.pop("schema_"), **data}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def outcome_json_schema() -> dict[str, Any]:
    schema = Outcome.model_json_schema(mode="serialization")
    props = schema["properties"]
    props["schema"] = props.pop("schema_")
    props["schema"] = {"const": SCHEMA, "type": "string", "title": "Schema"}
    # every outcome carries every field (null where it does not apply)
    schema["required"] = ["schema", *(name for name in props if name != "schema")]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA
    return schema


def outcome_for(notice: dict[str, Any], status: Status, at: datetime, *, reason: str | None = None,
                provider: str | None = None, provider_id: str | None = None,
                not_before: datetime | None = None) -> Outcome:
    """The outcome of one decision about one notice (a ledger row of `notices`)."""
    return Outcome(
        event_id=notice["event_id"], notice_id=notice["notice_id"],
        account_id=notice["account_id"], debtor_id=notice["debtor_id"], stage=notice["stage"],
        channel=notice["channel"], template=notice["template"], locale=notice["locale"],
        status=status, reason=reason, provider=provider, provider_id=provider_id,
        not_before=not_before, attempt=max(int(notice.get("attempts") or 0), 1), at=at,
    )


OutcomeMessage = tuple[str, str, str]  # routing key, JSON body, message id


class OutcomeSink(Protocol):
    """Where the relay's outcomes go: the broker (``intake.BrokerOutcomeSink``)."""

    async def publish(self, messages: list[OutcomeMessage]) -> None:
        """Publish (routing key, JSON body, message id) triples; return only once all are
        confirmed."""
        ...


def outcome_message(decision_id: int, outcome_json: str) -> OutcomeMessage:
    """One outcome of the ledger as the relay publishes it. Its routing key is
    ``<status>.<channel>``; its message id, ``<notice_id>/<decision id>``, names the decision,
    so an outcome published again (at least once: a crash after publishing, before marking it
    published) carries the same id, and two decisions about one notice (``deferred``, then
    ``sent``) carry two."""
    data = json.loads(outcome_json)
    return (f"{data['status']}.{data['channel']}", outcome_json,
            f"{data['notice_id']}/{decision_id}")

