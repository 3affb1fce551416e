"""The action ledger's primitives: the keys of an action, its one transition function
(``cases.transitions.ACTION_TRANSITIONS``), fencing, and the lock of an action a worker writes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection as db
from django.db.models import Subquery
from django.utils import timezone

from audit.services import audit_record, refusal_attach

from ..errors import ActionConnectionMismatch, ActionNotFound, ActionStateConflict, LeaseFenced, RunNotFound
from ..models import Action, Connection, Run
from ..transitions import ACTION_TRANSITIONS
from .common import _check_generation, _lock_connection


def idempotency_key_for(*, run_id: str, action_key: str) -> str:
    """The stable idempotency key of (run, action key): the same on every attempt and every worker."""
    digest = hashlib.sha256(f"{run_id}\x00{action_key}".encode()).hexdigest()
    return f"rv1_{digest[:48]}"


def params_hash_for(params: Any) -> str:
    if params is None:
        return ""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _action_snapshot(action: Action) -> dict[str, Any]:
    return {"state": action.state, "generation": action.generation, "attempts": action.attempts}


def _action_transition(
    action: Action, *, to: str, actor: str, arguments: dict[str, Any] | None = None, **changes: Any
) -> None:
    """Move an action (or insert a new one, whose ``state`` is None) and audit it."""
    before = _action_snapshot(action)
    action.state = to
    for name, value in changes.items():
        setattr(action, name, value)
    action.save()
    audit_record(
        actor=actor,
        action=f"action.{to}",
        entity_type="action",
        entity_id=f"{action.run_id}/{action.action_key}",
        run_id=action.run_id,
        connection_id=action.connection_id,
        before=before,
        after=_action_snapshot(action),
        arguments=arguments,
    )


def _require_action_move(action: Action, to: str) -> None:
    if to not in ACTION_TRANSITIONS[action.state]:
        raise ActionStateConflict(
            f"An action in state '{action.state}' cannot move to '{to}'.",
            data={"run_id": action.run_id, "action_key": action.action_key, "state": action.state, "to": to},
        )


def _fenced_event(*, actor: str, run_id: str, conn: Connection, what: str, generation: int) -> dict[str, Any]:
    return dict(
        actor=actor,
        action=f"{what}.fenced",
        entity_type="connection",
        entity_id=conn.pk,
        run_id=run_id,
        connection_id=conn.pk,
        arguments={"generation": generation, "current_generation": conn.current_generation},
        outcome="refused",
    )


def _audit_fenced(*, actor: str, run_id: str, conn: Connection, what: str, generation: int) -> None:
    """A fenced write that answers instead of raising: its refusal commits with the answer."""
    audit_record(**_fenced_event(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation))


def _lock_deadline() -> datetime:
    """Until when an executing action is locked without a heartbeat (``REVIVE_ACTION_LOCK_TIMEOUT``)."""
    return timezone.now() + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT)


def _lock_left(action: Action) -> dict[str, Any]:
    """When a worker that met an executing action should ask again: when its lock runs out (at least a second)."""
    until = action.lock_expires_at
    left = (until - timezone.now()).total_seconds() if until else 0.0
    return {
        "lock_expires_at": until.isoformat() if until else None,
        "retry_after": round(min(max(left, 1.0), float(settings.REVIVE_ACTION_LOCK_TIMEOUT)), 3),
    }


def _locked_action(
    *,
    conn: Connection,
    run_id: str,
    action_key: str,
    generation: int,
    actor: str,
    what: str,
    related: tuple[str, ...] = (),
    annotations: dict[str, Any] | None = None,
) -> Action:
    """Lock the action for a write that must come from the worker holding the current generation.

    ``related`` rows (``run``, ``checkpoint``) and ``annotations`` come with it in the same statement; only the
    action's row is locked."""
    _check_generation(conn, generation)
    if generation < conn.current_generation:
        raise refusal_attach(
            LeaseFenced(
                data={"connection_id": conn.pk, "generation": generation, "current_generation": conn.current_generation}
            ),
            **_fenced_event(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation),
        )
    qs = Action.objects.filter(run_id=run_id, action_key=action_key)
    qs = qs.select_related(*related).select_for_update(of=("self",)) if related else qs.select_for_update()
    if annotations:
        qs = qs.annotate(**annotations)
    action = qs.first()
    if action is None:
        if not Run.objects.filter(pk=run_id).exists():
            raise RunNotFound(data={"run_id": run_id})
        raise ActionNotFound(data={"run_id": run_id, "action_key": action_key})
    if action.connection_id != conn.pk:
        raise ActionConnectionMismatch(data={"action_key": action_key, "connection_id": action.connection_id})
    return action


def _action_connection_id(run_id: str, action_key: str) -> str:
    conn_id = (
        Action.objects.filter(run_id=run_id, action_key=action_key).values_list("connection_id", flat=True).first()
    )
    if conn_id is None:
        if not Run.objects.filter(pk=run_id).exists():
            raise RunNotFound(data={"run_id": run_id})
        raise ActionNotFound(data={"run_id": run_id, "action_key": action_key})
    return conn_id


def _lock_action_connection(*, run_id: str, action_key: str, exclusive: bool) -> Connection:
    """``_lock_connection`` of the connection of the run's action ``action_key``, found in the same statement."""
    of_action = Action.objects.filter(run_id=run_id, action_key=action_key).values("connection_id")[:1]
    if exclusive:
        conn = Connection.objects.filter(pk=Subquery(of_action)).select_for_update().first()
    elif db.vendor == "postgresql":
        sql = (
            "SELECT * FROM cases_connection WHERE id = "
            "(SELECT connection_id FROM cases_action WHERE run_id = %s AND action_key = %s) FOR SHARE"
        )
        conn = next(iter(Connection.objects.raw(sql, [run_id, action_key])), None)
    else:  # SQLite serialises writers with its database lock.
        conn = Connection.objects.filter(pk=Subquery(of_action)).first()
    if conn is None:  # no such action (or run): say which, as the action's other writes do
        return _lock_connection(_action_connection_id(run_id, action_key), exclusive=exclusive)
    return conn
