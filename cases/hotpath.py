"""The protected action's common case in one SQL statement per call (PostgreSQL).

Every protected action is a ``begin`` and a ``commit``. In the common case -- a fresh action that
may execute, then the same worker committing it -- each is one statement here, sent as a prepared
statement in one implicit transaction: one round trip each. Anything else (a replay, a fenced or
unknown generation, a parked or resuming run, a rejected generation, an ambiguous or executing
entry, a re-execution, a concurrent begin of the same action) makes the statement change nothing
and return no row, and the caller falls back to ``cases.services``, which keeps every rule of the
contract with row locks in its usual order. So this module only ever takes the path on which the
locked path would have answered ``execute`` / ``committed``, and writes exactly what it writes:
the ledger row and its one audit event (and a checkpoint first seen, with its audit event).

What each clause keeps, by invariant (``../shared/DESIGN.md``):

``begin``
  * ``conn``: *generation fencing (2)*. The worker's generation must equal the connection's current
    one, read ``FOR SHARE OF c`` -- the same lock the locked path takes -- so a generation advance or a
    case opening (``FOR UPDATE`` of the connection) and this statement serialise. If an advance commits
    while we wait for the lock, PostgreSQL re-reads the connection row (read committed) and
    ``current_generation = %s`` no longer holds: no row, nothing written, the fallback answers ``fenced``.
    ``g.state = 'issued'``: a rejected generation must open or join a case -- fallback.
  * ``run``: *same run (1), live until done (9), resumed only past the parked action (pipeline)*. Only an
    ``active`` run with no ``case_run`` still waiting (``resumed_at IS NULL``: its case is open, or released
    but the run is not yet past the action it was parked on) may take this path. A ``parked`` run (joining or
    re-living, ``_run_relive``), a run of an open case, and a resumed run before it goes past its parked action
    all take the locked path, which runs the pipeline's rules. A fresh action of such a run would change no
    case there either; the fallback is wider than needed, never narrower. Depends on ``conn``: no connection
    row, no run row.
  * ``cp_old`` / ``cp_new``: the checkpoint is reused or recorded (``ON CONFLICT DO NOTHING``: a
    concurrent recorder wins and this statement inserts no action, so the fallback answers).
  * ``act``: *at most once per action key (3)*. ``INSERT … ON CONFLICT DO NOTHING`` on the ledger's unique
    (run, action key) and idempotency key: an existing entry -- committed, ambiguous, executing, failed,
    begun -- or a concurrent begin makes this insert nothing; the locked path then replays, asks to
    reconcile, refuses ``ACTION_IN_PROGRESS`` or re-executes with its own rules.
  * ``act``'s values: ``lock_expires_at`` is now + ``REVIVE_ACTION_LOCK_TIMEOUT`` (``services._lock_deadline``),
    and the caller answers ``lock_seconds`` as the locked path does; a heartbeat extends it there.
  * ``audit``: *every transition is evidence (7)*. The ``checkpoint.recorded`` event if the checkpoint is
    new, then the ``action.executing`` event if the row was written, in that order (ids follow
    ``ORDER BY``), in the same implicit transaction, as ``checkpoint_record`` and the locked path write them,
    with the request's ``trace_id`` as ``audit_record`` stores it.

``commit``
  * ``conn``: *generation fencing (2)*. As in ``begin``: the action's connection, ``FOR SHARE``, at the
    worker's generation; an advance committed meanwhile leaves no row and the fallback answers ``fenced``.
  * ``done``: *at most once (3)*. ``UPDATE … WHERE state = 'executing' AND generation = %s``: only the claim
    this worker holds moves to ``committed``; a repeated commit, a reaper that made it ``ambiguous``
    first (the row lock, then a re-check of ``state``), or a claim of another generation updates nothing.
    *Resumed only past the parked action (pipeline)*: ``NOT EXISTS`` a ``case_run`` of the run with
    ``resumed_at IS NULL``. Such a commit may be the run going past its parked action, which marks the case run
    and may move its case to ``resumed`` (``services._run_went_past`` / ``_case_finish_if_resumed``), so it
    takes the locked path (a superset of when the past-check acts: that one also needs a released case of this
    connection at or below this generation, and skips connections never reconnected). Rows this statement's
    snapshot cannot see (committed while ``conn`` waited for its lock) are no gap: a case takes runs only while its
    rejected generation is the connection's current one (``_open_case_for``), i.e. before a reconnect advances
    it, so such a case run belongs to a case not yet released, which the past-check ignores too. The case's
    own state is not read here, so its later moves (``reauthorized`` -> ``resuming``) cannot race this test.
  * ``audit``: *every transition is evidence (7)*: the ``action.committed`` event with the ``trace_id``, same
    statement.

The locked path is ``cases.services.action_begin`` / ``action_commit``; they call these first. SQLite
(the embedded default) always takes the locked path.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from psycopg import Cursor
from psycopg.types.json import Jsonb

from audit.context import work_context
from audit.redaction import redact

from .models import Action

PREPARE_ONLY_WHEN_ASKED = 2**31 - 1

AUDIT_COLUMNS = (
    "occurred_at, actor, action, entity_type, entity_id, case_id, case_reference, run_id, connection_id, "
    "before, after, arguments, outcome, trace_id"
)

BEGIN_SQL = f"""
WITH conn AS (
    SELECT c.id FROM cases_connection c
    JOIN cases_credentialgeneration g ON g.connection_id = c.id AND g.number = c.current_generation
    WHERE c.id = %(connection_id)s AND c.current_generation = %(generation)s AND g.state = 'issued'
    FOR SHARE OF c
), run AS (
    SELECT r.id FROM cases_run r, conn
    WHERE r.id = %(run_id)s AND r.state = 'active'
      AND NOT EXISTS (SELECT 1 FROM cases_caserun cr WHERE cr.run_id = r.id AND cr.resumed_at IS NULL)
), cp_old AS (
    SELECT cp.id FROM cases_checkpoint cp, run WHERE cp.run_id = run.id AND cp.checkpoint_id = %(checkpoint_id)s
), cp_new AS (
    INSERT INTO cases_checkpoint (run_id, checkpoint_id, label, runtime_ref, created_at)
    SELECT run.id, %(checkpoint_id)s, %(checkpoint_id)s, '{{}}'::jsonb, %(now)s FROM run WHERE NOT EXISTS (SELECT 1 FROM cp_old)
    ON CONFLICT (run_id, checkpoint_id) DO NOTHING
    RETURNING id
), cp AS (
    SELECT id FROM cp_old UNION ALL SELECT id FROM cp_new
), act AS (
    INSERT INTO cases_action (run_id, action_key, idempotency_key, connection_id, checkpoint_id, params_hash, state, generation,
                              attempts, result, external_ref, error, evidence, reconciled_by, reconciliations, lock_expires_at,
                              created_at, updated_at)
    SELECT run.id, %(action_key)s, %(idempotency_key)s, conn.id, cp.id, %(params_hash)s, 'executing', %(generation)s,
           1, NULL, '', NULL, NULL, '', '[]'::jsonb, %(lock_expires_at)s, %(now)s, %(now)s
    FROM conn, run, cp
    ON CONFLICT DO NOTHING
    RETURNING id
), audit AS (
    INSERT INTO audit_auditevent ({AUDIT_COLUMNS})
    SELECT %(now)s, %(actor)s, e.action, e.entity_type, e.entity_id, NULL, '', %(run_id)s, e.connection_id, e.before, e.after,
           '{{}}'::jsonb, 'ok', %(trace_id)s
    FROM (
        SELECT 1 AS nth, 'checkpoint.recorded' AS action, 'checkpoint' AS entity_type, %(checkpoint_entity)s AS entity_id,
               '' AS connection_id, NULL::jsonb AS before, %(checkpoint_after)s::jsonb AS after FROM cp_new
        UNION ALL
        SELECT 2, 'action.executing', 'action', %(action_entity)s, %(connection_id)s, %(before)s::jsonb, %(after)s::jsonb FROM act
    ) e ORDER BY e.nth
)
SELECT id FROM act
"""

COMMIT_SQL = f"""
WITH conn AS (
    SELECT c.id FROM cases_connection c
    WHERE c.id = (SELECT a.connection_id FROM cases_action a WHERE a.run_id = %(run_id)s AND a.action_key = %(action_key)s)
      AND c.current_generation = %(generation)s
    FOR SHARE
), done AS (
    UPDATE cases_action a
    SET state = 'committed', result = %(result)s, external_ref = %(external_ref)s, lock_expires_at = NULL, updated_at = %(now)s
    FROM conn
    WHERE a.run_id = %(run_id)s AND a.action_key = %(action_key)s AND a.connection_id = conn.id
      AND a.state = 'executing' AND a.generation = %(generation)s
      AND NOT EXISTS (SELECT 1 FROM cases_caserun cr WHERE cr.run_id = a.run_id AND cr.resumed_at IS NULL)
    RETURNING a.id, a.idempotency_key, a.connection_id, a.checkpoint_id, a.params_hash, a.attempts, a.created_at
), audit AS (
    INSERT INTO audit_auditevent ({AUDIT_COLUMNS})
    SELECT %(now)s, %(actor)s, 'action.committed', 'action', %(action_entity)s, NULL, '', %(run_id)s, done.connection_id,
           jsonb_build_object('state', 'executing', 'generation', %(generation)s::int, 'attempts', done.attempts),
           jsonb_build_object('state', 'committed', 'generation', %(generation)s::int, 'attempts', done.attempts),
           %(arguments)s, 'ok', %(trace_id)s
    FROM done
)
SELECT id, idempotency_key, connection_id, checkpoint_id, params_hash, attempts, created_at FROM done
"""


def available() -> bool:
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


def _execute(sql: str, params: dict[str, Any]) -> tuple | None:
    """One prepared statement on Django's connection: in its transaction if one is open, else its own implicit one.

    It stands in for Django's per-request health check (``CONN_HEALTH_CHECKS``, a ``SELECT 1`` round trip):
    if a reused connection turns out dead, outside a transaction, the statement is sent once more on a new
    one. Sending it twice is safe: a begin or commit that did happen the first time makes the second
    change nothing, and the locked path answers from the row the first one wrote.
    """
    db = connections[DEFAULT_DB_ALIAS]  # this thread's connection, looked up once per call
    reused = db.connection is not None and not db.in_atomic_block
    try:
        return _execute_once(db, sql, params)
    except (OperationalError, InterfaceError):
        if not reused:
            raise
        db.close()
        return _execute_once(db, sql, params)


def _execute_once(db: BaseDatabaseWrapper, sql: str, params: dict[str, Any]) -> tuple | None:
    db.ensure_connection()
    raw = db.connection
    if raw.prepare_threshold is None:
        # Django turns psycopg's prepared statements off; planning these CTEs costs more than running them, so they
        # are prepared once per connection (``prepare=True``). Django's own queries use client-side binding cursors,
        # which never prepare, so this threshold changes nothing for them.
        raw.prepare_threshold = PREPARE_ONLY_WHEN_ASKED
    with db.wrap_database_errors, Cursor(raw) as cur:
        cur.execute(sql, params, prepare=True)
        row = cur.fetchone()
    # The connection just answered: a fallback in this request needs no SELECT 1. (django-stubs does not declare
    # BaseDatabaseWrapper.health_check_done, which Django has had since 4.1.)
    db.health_check_done = True  # type: ignore[attr-defined]
    return row


@lru_cache(maxsize=256)
def _snapshot(state: str | None, generation: int, attempts: int) -> Jsonb:
    """An audit snapshot of the ledger row; its few distinct values are built and redacted once (Jsonb is not changed
    by sending it)."""
    return Jsonb(redact({"state": state, "generation": generation, "attempts": attempts}))


_ACTION_FIELDS = tuple(f.attname for f in Action._meta.concrete_fields)


def begin_execute(
    *,
    run_id: str,
    checkpoint_id: str,
    connection_id: str,
    action_key: str,
    generation: int,
    idempotency_key: str,
    params_hash: str,
    actor: str,
) -> bool:
    """Claim a fresh action for execution in one statement; False means: nothing was written, take the locked path."""
    now = timezone.now()
    row = _execute(
        BEGIN_SQL,
        {
            "connection_id": connection_id,
            "generation": generation,
            "run_id": run_id,
            "checkpoint_id": checkpoint_id,
            "action_key": action_key,
            "idempotency_key": idempotency_key,
            "params_hash": params_hash,
            "actor": actor[:200],
            "now": now,
            "lock_expires_at": now + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT),
            "checkpoint_entity": f"{run_id}/{checkpoint_id}"[:200],
            "checkpoint_after": Jsonb(
                redact({"checkpoint_id": checkpoint_id, "label": checkpoint_id, "runtime_ref": {}})
            ),
            "action_entity": f"{run_id}/{action_key}"[:200],
            "before": _snapshot(None, generation, 0),
            "after": _snapshot(Action.State.EXECUTING, generation, 1),
            "trace_id": work_context()["trace_id"],
        },
    )
    return row is not None


def commit(
    *, run_id: str, action_key: str, generation: int, result: Any, external_ref: str, actor: str
) -> Action | None:
    """Commit the executing action this worker claimed, in one statement; None means: take the locked path."""
    now: datetime = timezone.now()
    external_ref = external_ref or ""
    row = _execute(
        COMMIT_SQL,
        {
            "run_id": run_id,
            "action_key": action_key,
            "generation": generation,
            "now": now,
            "actor": actor[:200],
            "result": None if result is None else Jsonb(result),
            "external_ref": external_ref,
            "action_entity": f"{run_id}/{action_key}"[:200],
            "arguments": Jsonb(redact({"external_ref": external_ref})),
            "trace_id": work_context()["trace_id"],
        },
    )
    if row is None:
        return None
    pk, idempotency_key, connection_id, checkpoint_pk, params_hash, attempts, created_at = row
    values = {
        "id": pk,
        "run_id": run_id,
        "action_key": action_key,
        "idempotency_key": idempotency_key,
        "connection_id": connection_id,
        "checkpoint_id": checkpoint_pk,
        "params_hash": params_hash,
        "state": Action.State.COMMITTED,
        "generation": generation,
        "attempts": attempts,
        "result": result,
        "external_ref": external_ref,
        "lock_expires_at": None,
        "created_at": created_at,
        "updated_at": now,
    }
    # As a row loaded from the database: the columns this statement did not return are deferred (read on access).
    # ``from_db`` builds the instance positionally, Django's fast path.
    names = [name for name in _ACTION_FIELDS if name in values]
    return Action.from_db(DEFAULT_DB_ALIAS, names, [values[name] for name in names])
