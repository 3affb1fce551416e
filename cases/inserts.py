"""One INSERT that steps aside for a row already there: ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.

Django's ``create`` in a savepoint, with a read before it or an ``IntegrityError`` caught after it, costs three or four
statements for what PostgreSQL (and SQLite) answer in one: the row is inserted and its id returned, or nothing is
inserted because a unique index already holds its key (an INSERT that meets a key another transaction is inserting
waits for that one to commit or roll back, as any INSERT does).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connections, router
from django.db.models import Model


def insert_unless_conflict(obj: Model, *, conflict_target: Sequence[str] = ()) -> bool:
    """Insert ``obj`` unless a unique index (of ``conflict_target``'s fields, or any) already holds its key.

    Answers whether it was inserted; if so, its primary key and the other columns the database fills on insert
    (``db_returning``) are set on it, as ``save`` would. Every other column is written from ``obj`` (a model with a
    ``db_default`` or a generated field is not one to use it on).
    """
    meta = obj._meta
    db = connections[router.db_for_write(type(obj))]
    fields = [f for f in meta.local_concrete_fields if not (f is meta.auto_field and obj.pk is None)]
    values = [f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields]
    returning = meta.db_returning_fields
    qn = db.ops.quote_name
    columns = [f.column for name in conflict_target for f in meta.concrete_fields if f.name == name]
    target = f" ({', '.join(qn(column) for column in columns)})" if conflict_target else ""
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT{target} DO NOTHING RETURNING {', '.join(qn(f.column) for f in returning)}"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    if row is None:
        return False
    for field, value in zip(returning, row, strict=True):
        setattr(obj, field.attname, value)
    obj._state.adding, obj._state.db = False, db.alias
    return True
