"""The ledger's hot statements, run on the driver's own cursor.

The statements of every round (the intake's inserts, the claim, the contact rules, the
decisions, the outbox) are still written with SQLAlchemy Core and compiled by it, once per
dialect. Running a compiled statement through a ``Connection`` still costs 40-190 µs of
Python per statement (an execution context, parameters and result rows processed one by one)
against 6-36 µs on the DBAPI cursor (measured here on SQLite). So these statements are run
here instead: the SQL SQLAlchemy compiled, an ``IN`` list rendered for its length, every
bound value passed through its column type's own bind processor, and every result value
through its type's result processor (SQLite's UTC text back to aware datetimes, say).

Inside a transaction of :class:`~service.ledger.threads.LedgerThreads` (the cursor belongs to
the same connection); errors come back as SQLAlchemy's ``DBAPIError``, with a lost
connection invalidated, as ``Connection.execute`` does.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache, lru_cache
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ClauseElement

_TOKEN = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
CHUNK = 64  # rows per multi-row INSERT … RETURNING statement at most
Processor = Callable[[Any], Any] | None
_Slot = tuple[str, int, Processor]  # a bound name, its index in an IN list or -1, its binder
# bind_many's plan: the SQL, the bound names in order, a picker of a row's values for them,
# and (index, bind processor) of the names whose type converts its values
_ManyPlan = tuple[str, tuple[str, ...], Callable[[Mapping[str, Any]], Sequence[Any]],
                  tuple[tuple[int, Callable[[Any], Any]], ...]]


def _padded(size: int) -> int:
    """An ``IN`` list is rendered for the next power of two (its last value repeated), so
    that a few statement texts serve every length and the driver's statement cache holds."""
    return 0 if size == 0 else 1 << (size - 1).bit_length()


class Compiled:
    """One statement compiled for one dialect: SQL text, its bound names and their types."""

    def __init__(self, statement: ClauseElement, dialect: Dialect,
                 keys: tuple[str, ...]) -> None:
        # the keys given decide an INSERT's columns, as with Connection.execute
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=list(keys)))
        self.text = compiled.string
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        self.order: tuple[str, ...] | None = (tuple(compiled.positiontup or ())
                                              if dialect.positional else None)
        # the statement's own values (a literal in a WHERE clause): not the caller's to give
        self.fixed = {name: bind.effective_value for name, bind in binds.items()
                      if not bind.required}
        self.expanding = tuple(sorted(name for name, bind in binds.items() if bind.expanding))
        self.binders: dict[str, Processor] = {
            name: bind.type.bind_processor(dialect) for name, bind in binds.items()}
        columns = list(getattr(statement, "exported_columns", ()))
        self.make_row: Callable[[Iterable[Any]], Any] = namedtuple(  # type: ignore[attr-defined]
            "Row", [c.key for c in columns], rename=True)._make
        self.readers: list[Processor] = [c.type.result_processor(dialect, None)
                                         for c in columns]
        self._texts: dict[tuple[int, ...], tuple[str, tuple[_Slot, ...]]] = {}
        self._many: _ManyPlan | None = None

    def _rendered(self, sizes: tuple[int, ...]) -> tuple[str, tuple[_Slot, ...]]:
        """The SQL for these ``IN`` list lengths, and where each value goes: (name, index in
        its list or -1, bind processor), in order (positional drivers) or by name."""
        found = self._texts.get(sizes)
        if found is not None:
            return found
        size_of = dict(zip(self.expanding, sizes, strict=True))

        def render(match: re.Match[str]) -> str:
            name = match.group(1)
            if size_of[name] == 0:
                return "NULL"  # x IN (NULL) holds for no row, as an empty list would
            if self.order is not None:
                return ", ".join(["?"] * size_of[name])
            return ", ".join(f"%({name}__{i})s" for i in range(size_of[name]))

        def slots(name: str) -> list[_Slot]:
            binder = self.binders[name]
            if name in size_of:
                return [(name, i, binder) for i in range(size_of[name])]
            return [(name, -1, binder)]

        names = self.order if self.order is not None else tuple(self.binders)
        found = (_TOKEN.sub(render, self.text),
                 tuple(slot for name in names for slot in slots(name)))
        self._texts[sizes] = found
        return found

    def bind(self, params: Mapping[str, Any]) -> tuple[str, Sequence[Any] | dict[str, Any]]:
        """The SQL and the driver's parameters for one set of values."""
        fixed = self.fixed
        lists = {name: _pad(list(params[name] if name in params else fixed[name] or ()))
                 for name in self.expanding}
        text, slots = self._rendered(tuple(len(lists[name]) for name in self.expanding))
        values = []
        for name, index, binder in slots:
            if index >= 0:
                value = lists[name][index]
            else:
                value = params[name] if name in params else fixed[name]
            values.append(value if binder is None else binder(value))
        if self.order is not None:
            return text, values
        return text, {name if index < 0 else f"{name}__{index}": value
                      for (name, index, _), value in zip(slots, values, strict=True)}

    def bind_many(self, rows: Sequence[Mapping[str, Any]]
                  ) -> tuple[str, list[Sequence[Any]] | list[dict[str, Any]]]:
        """:meth:`bind` for many sets of values (a statement with no ``IN`` list).

        A row's values are picked all at once, and only the columns whose type converts
        its values go through their bind processors (times, say; most take text as it is)."""
        text, names, pick, converts = self._many_plan()
        fixed = self.fixed
        values: list[Sequence[Any]] = []
        for row in rows:
            try:
                one = list(pick(row))
            except KeyError:  # a value the statement holds itself, not the row
                one = [row[name] if name in row else fixed[name] for name in names]
            for index, binder in converts:
                one[index] = binder(one[index])
            values.append(one)
        if self.order is not None:
            return text, values
        return text, [dict(zip(names, one, strict=True)) for one in values]

    def _many_plan(self) -> _ManyPlan:
        if self._many is None:
            if self.expanding:
                raise ValueError("a statement with an IN list takes one set of values")
            text, slots = self._rendered(())
            names = tuple(name for name, _, _ in slots)
            self._many = (text, names, _picker(names), tuple(
                (index, binder) for index, (_, _, binder) in enumerate(slots)
                if binder is not None))
        return self._many

    def rows(self, fetched: Iterable[Sequence[Any]]) -> list[Any]:
        readers, make = self.readers, self.make_row
        if not any(readers):
            return [make(values) for values in fetched]
        return [make([value if reader is None else reader(value)
                      for reader, value in zip(readers, values, strict=True)])
                for values in fetched]


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """A row's values for ``names``, in order, as a sequence (``itemgetter`` of one name
    gives the value itself, of none is not allowed)."""
    if len(names) > 1:
        return itemgetter(*names)
    return lambda row: tuple(row[name] for name in names)


def _pad(values: list[Any]) -> list[Any]:
    return values + values[-1:] * (_padded(len(values)) - len(values))


@lru_cache(maxsize=1024)  # every statement of a round, for each ledger's dialect
def _compiled(statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...]) -> Compiled:
    return Compiled(statement, dialect, keys)


def compiled(statement: ClauseElement, dialect: Dialect, params: Mapping[str, Any]) -> Compiled:
    keys = tuple(sorted(params)) if isinstance(statement, UpdateBase) else ()
    return _compiled(statement, dialect, keys)


def _cursor(conn: Connection) -> Any:
    if not conn.in_transaction():
        conn.begin()  # as Connection.execute would: the caller's commit or rollback ends it
    return conn.connection.cursor()


def _failed(conn: Connection, exc: Any, text: str, params: Any, cursor: Any) -> Exception:
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    error: Exception = DBAPIError.instance(text, params, exc, dialect.loaded_dbapi.Error,
                                           connection_invalidated=lost, dialect=dialect)
    return error


def _execute(conn: Connection, statement: ClauseElement, params: Mapping[str, Any] | None,
             answer: Callable[[Any, Compiled], Any]) -> Any:
    params = params or {}
    plan = compiled(statement, conn.dialect, params)
    text, values = plan.bind(params)
    cursor = _cursor(conn)
    try:
        cursor.execute(text, values)
        return answer(cursor, plan)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _failed(conn, exc, text, values, cursor) from exc
    finally:
        cursor.close()


def run(conn: Connection, statement: ClauseElement, params: Mapping[str, Any] | None = None
        ) -> list[Any]:
    """One statement; its rows (named tuples) if it returns any. The rows are read here."""
    return cast(list[Any], _execute(conn, statement, params, lambda cursor, plan: plan.rows(
        cursor.fetchall()) if cursor.description else []))


def count(conn: Connection, statement: ClauseElement, params: Mapping[str, Any] | None = None
          ) -> int:
    """One statement that returns no rows; how many rows it changed."""
    return int(_execute(conn, statement, params, lambda cursor, _: cursor.rowcount))


def run_many(conn: Connection, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]) -> int:
    """One statement (no ``IN`` list, no rows returned) for each of ``rows``; how many rows
    they changed in all."""
    if not rows:
        return 0
    plan = compiled(statement, conn.dialect, rows[0])
    text, values = plan.bind_many(rows)
    cursor = _cursor(conn)
    try:
        cursor.executemany(text, values)
        return int(cursor.rowcount)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _failed(conn, exc, text, None, cursor) from exc
    finally:
        cursor.close()


@cache
def insert_ignore(dialect: str, table: Table, returning: str | None = None) -> ClauseElement:
    """INSERT … ON CONFLICT DO NOTHING into ``table`` (RETURNING a column), built once."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    statement = insert.on_conflict_do_nothing()
    return statement.returning(table.c[returning]) if returning else statement


@cache
def _known(table: Table, key: str) -> ClauseElement:
    return select(table.c[key]).where(table.c[key].in_(bindparam("keys", expanding=True)))


@cache
def _multi_insert(dialect: str, table: Table, key: str, columns: tuple[str, ...],
                  size: int) -> ClauseElement:
    """:func:`insert_ignore` RETURNING ``key`` for ``size`` rows in one statement."""
    multi: ClauseElement = insert_ignore(dialect, table, key).values([  # type: ignore[attr-defined]
        {name: bindparam(f"{name}__r{i}", type_=table.c[name].type) for name in columns}
        for i in range(size)])
    return multi


def insert_new(conn: Connection, table: Table, key: str,
               rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Insert the rows (all with the same columns) whose ``key`` is not in ``table`` yet (the
    first of two with one key); the keys inserted, in order.

    SQLite has one writer, so the keys found first are still the ones there when the rows
    go in, all at once through the driver's ``executemany``; on PostgreSQL another worker
    may insert the same key meanwhile, so ON CONFLICT DO NOTHING … RETURNING says which rows
    went in (multi-row statements of up to :data:`CHUNK` rows).
    """
    if not rows:
        return []
    dialect = conn.dialect.name
    if dialect == "sqlite":
        keys = list(dict.fromkeys(row[key] for row in rows))
        known = {found[0] for found in run(conn, _known(table, key), {"keys": keys})}
        fresh: dict[Any, Mapping[str, Any]] = {}
        for row in rows:
            if row[key] not in known:
                fresh.setdefault(row[key], row)
        run_many(conn, insert_ignore(dialect, table), list(fresh.values()))
        return list(fresh)
    columns = tuple(rows[0])
    inserted: list[Any] = []
    for start in range(0, len(rows), CHUNK):
        chunk = list(rows[start:start + CHUNK])
        # 1-8 rows as they are, more rounded up to a multiple of 8 (few statement texts); a
        # repeated row is skipped as a conflict
        chunk += chunk[-1:] * (-len(chunk) % 8 if len(chunk) > 8 else 0)
        statement = _multi_insert(dialect, table, key, columns, len(chunk))
        inserted.extend(found[0] for found in run(conn, statement, {
            f"{name}__r{i}": row[name] for i, row in enumerate(chunk) for name in columns}))
    return inserted


def insert_counted(conn: Connection, table: Table, key: str,
                   rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert the rows (all with the same columns), a row whose ``key`` is there already
    skipped; how many went in. For rows new by construction (the notices of events new in
    this transaction, whose ids derive from the events'), SQLite needs no look-up first:
    its ``executemany`` counts what it inserted. PostgreSQL as :func:`insert_new`."""
    if conn.dialect.name != "sqlite":
        return len(insert_new(conn, table, key, rows))
    return run_many(conn, insert_ignore("sqlite", table), rows)


def as_dict(row: Any) -> dict[str, Any]:
    """A row of :func:`run` as a dict of its columns."""
    return dict(row._asdict())
