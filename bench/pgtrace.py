"""Count what a piece of code sends to PostgreSQL, on the wire, with libpq's own trace (psycopg ``pgconn.trace``).

Django's query capture (``CaptureQueriesContext``) sees only what goes through its cursor wrappers:
it misses ``BEGIN`` / ``COMMIT`` / ``SAVEPOINT``, the connection health check and psycopg's own
statements. libpq's trace records every protocol message the client sends, so this counts every
statement (a simple-protocol ``Query`` or an extended-protocol ``Execute``) and every round trip
(a ``ReadyForQuery`` the server answers).

    with count_statements() as trace:
        ...                      # anything that uses Django's default connection, in this thread
    trace.statements             # ['BEGIN', 'SELECT 1', 'WITH conn AS (...', 'COMMIT']

Connections Django opens meanwhile (after a request closed the previous one) are traced too.
PostgreSQL only.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from django.db import connection as default_connection
from django.db.backends.signals import connection_created


@dataclass
class Trace:
    statements: list[str] = field(default_factory=list)
    round_trips: int = 0

    def __len__(self) -> int:
        return len(self.statements)

    def summary(self) -> str:
        return "\n".join(f"  {i + 1:>2}. {s[:160]}" for i, s in enumerate(self.statements))


_QUOTED = re.compile(r'"((?:[^"]|"")*)"')


def _text(field: str) -> str:
    """A statement's text as libpq's trace prints it: between the first and the last double quote, unescaped (a
    Parse message's parameter types follow it, unquoted)."""
    body = field.strip()
    if body.startswith('"') and '"' in body[1:]:
        return body[1 : body.rindex('"')]
    return body


def _parse(text: str, trace: Trace) -> None:
    prepared: dict[str, str] = {}  # statement name -> text (extended protocol)
    bound = ""
    for line in text.splitlines():
        parts = line.split("\t", 3)
        if len(parts) < 4 or parts[0] not in ("F", "B"):
            continue
        side, _, message, rest = parts
        if side == "F" and message == "Query":
            trace.statements.append(_text(rest))
        elif side == "F" and message == "Parse":
            name = _QUOTED.search(rest)  # a statement's name has no quote in it; its text may (quoted identifiers)
            if name:
                prepared[name.group(1)] = _text(rest[name.end() :])
        elif side == "F" and message == "Bind":
            quoted = _QUOTED.findall(rest)
            bound = prepared.get(quoted[1], "(prepared statement)") if len(quoted) >= 2 else "(prepared statement)"
        elif side == "F" and message == "Execute":
            trace.statements.append(" ".join(bound.split()))
        elif side == "B" and message == "ReadyForQuery":
            trace.round_trips += 1


@contextmanager
def count_statements(connection=default_connection) -> Iterator[Trace]:
    """Trace ``connection`` (Django's default one unless given) and every connection it opens meanwhile."""
    if connection.vendor != "postgresql":
        raise RuntimeError("count_statements traces libpq: PostgreSQL only")
    trace = Trace()
    traced: list[psycopg.Connection] = []
    with tempfile.TemporaryFile() as sink:

        def start(raw) -> None:
            raw.pgconn.trace(os.dup(sink.fileno()))  # libpq's stream on its own descriptor
            raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            traced.append(raw)

        def on_created(sender, connection, **kwargs) -> None:
            if connection.alias == default_connection.alias:
                start(connection.connection)

        if connection.connection is not None:
            start(connection.connection)
        connection_created.connect(on_created, weak=False)
        try:
            yield trace
        finally:
            connection_created.disconnect(on_created)
            for raw in traced:
                if not raw.closed:
                    raw.pgconn.untrace()
            sink.seek(0)
            _parse(sink.read().decode("utf-8", "replace"), trace)
