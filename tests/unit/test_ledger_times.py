"""Times in a SQLite ledger: the text SQLAlchemy's own DATETIME writes, read back aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite

from service.ledger.schema import UtcDateTime

DIALECT = sqlite.dialect()
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])
TIMES = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30),
                     timezones=ZONES)


def stock_text(value: datetime) -> str:
    """What SQLAlchemy's SQLite DATETIME writes for the same instant, naive in UTC."""
    process = DateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
    assert process is not None
    text = process(value.astimezone(UTC).replace(tzinfo=None))
    assert isinstance(text, str)
    return text


@given(TIMES)
def test_a_time_is_written_as_sqlalchemy_writes_it_and_read_back_the_same(value: datetime
                                                                         ) -> None:
    write = UtcDateTime().bind_processor(DIALECT)
    read = UtcDateTime().result_processor(DIALECT, None)
    assert write is not None and read is not None
    text = write(value)
    assert text == stock_text(value)
    back = read(text)
    assert back == value and back.tzinfo is UTC


def test_whole_seconds_keep_their_microseconds_so_that_text_order_is_time_order() -> None:
    write = UtcDateTime().bind_processor(DIALECT)
    assert write is not None
    whole, later = datetime(2026, 11, 28, 3, 0, tzinfo=UTC), datetime(2026, 11, 28, 3, 0, 0, 1,
                                                                       tzinfo=UTC)
    assert write(whole) == "2026-11-28 03:00:00.000000" < write(later)


def test_a_naive_time_is_refused() -> None:
    write = UtcDateTime().bind_processor(DIALECT)
    assert write is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        write(datetime(2026, 11, 28, 3, 0))
