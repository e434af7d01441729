"""The delivery ledger: the durable state of every notice (SQLite or PostgreSQL)."""

from service.ledger.ingest import Accepted, Ingest, IngestReport, normalise_destination
from service.ledger.store import LedgerUnavailable, SqlLedger
from service.ledger.threads import driver_url

__all__ = ["Accepted", "Ingest", "IngestReport", "LedgerUnavailable", "SqlLedger", "driver_url",
           "normalise_destination"]
