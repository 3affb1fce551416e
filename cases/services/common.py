"""What every service shares: the actor of system writes, and the row locks taken in the package's lock order
(connection, then run, then action, then case run, then case; see ``cases.services``).
"""

from __future__ import annotations

from django.db import connection as db
from django.db.models import QuerySet

from ..errors import CaseNotFound, ConnectionNotFound, GenerationUnknown, RunNotFound
from ..models import BLOCKING_CASE_STATES, OPEN_CASE_STATES, CaseRun, Connection, RecoveryCase, Run

SYSTEM = "system"


def _lock_connection(connection_id: str, *, exclusive: bool) -> Connection:
    """Lock a connection row; ``FOR SHARE`` unless ``exclusive`` (see ``cases.services``)."""
    qs = Connection.objects.filter(pk=connection_id)
    if exclusive:
        conn = qs.select_for_update().first()
    elif db.vendor == "postgresql":
        conn = next(
            iter(Connection.objects.raw("SELECT * FROM cases_connection WHERE id = %s FOR SHARE", [connection_id])),
            None,
        )
    else:  # SQLite serialises writers with its database lock.
        conn = qs.first()
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    return conn


def _lock_connection_for_begin(connection_id: str) -> Connection:
    """``FOR SHARE`` lock of a connection, read together with the state of its current generation."""
    sql = (
        "SELECT c.*, g.state AS current_generation_state FROM cases_connection c "
        "LEFT JOIN cases_credentialgeneration g ON g.connection_id = c.id AND g.number = c.current_generation "
        "WHERE c.id = %s"
    )
    if db.vendor == "postgresql":
        sql += " FOR SHARE OF c"
    conn = next(iter(Connection.objects.raw(sql, [connection_id])), None)
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    return conn


def _get_run(run_id: str, *, lock: bool = False) -> Run:
    qs = Run.objects.filter(pk=run_id)
    run = (qs.select_for_update(no_key=True) if lock else qs).first()
    if run is None:
        raise RunNotFound(data={"run_id": run_id})
    return run


def _check_generation(conn: Connection, generation: int) -> None:
    if generation > conn.current_generation or generation < 1:
        raise GenerationUnknown(
            data={"connection_id": conn.pk, "generation": generation, "current_generation": conn.current_generation}
        )


def _blocking_case(run: Run) -> RecoveryCase | None:
    return (
        RecoveryCase.objects.filter(
            case_runs__run=run, case_runs__resumed_at__isnull=True, state__in=BLOCKING_CASE_STATES
        )
        .order_by("opened_at")
        .first()
    )


def _open_cases(conn: Connection, generation: int) -> QuerySet[RecoveryCase]:
    """The open case of a (connection, generation), if any (at most one: ``one_open_case_per_connection_generation``)."""
    return RecoveryCase.objects.filter(connection=conn, rejected_generation=generation, state__in=OPEN_CASE_STATES)


def _open_case_for(conn: Connection, generation: int) -> RecoveryCase | None:
    return _open_cases(conn, generation).first()


def case_lock(case_id: str | int) -> RecoveryCase:
    """Lock a case by reference (``CASERV-0001``) or primary key."""
    case = _case_queryset(case_id).select_for_update(no_key=True).first()
    if case is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    return case


def _case_queryset(case_id: str | int):
    if isinstance(case_id, str) and not case_id.isdigit():
        return RecoveryCase.objects.filter(reference=case_id)
    return RecoveryCase.objects.filter(pk=int(case_id))


def _case_connection_id(case_id: str | int) -> str:
    conn_id = _case_queryset(case_id).values_list("connection_id", flat=True).first()
    if conn_id is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    return conn_id


def _lock_case_runs_then_case(case_id: str | int) -> RecoveryCase:
    """Lock every run of the case (by primary key), then the case.

    Releasing a run blocked on several connections is decided with its runs locked: two cases released at the
    same instant queue on their shared runs, so the second sees the first's release and unparks them (a case
    lock alone let each see the other still blocking and leave the shared runs parked).
    """
    pk = _case_queryset(case_id).values_list("pk", flat=True).first()
    if pk is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    run_ids = list(CaseRun.objects.filter(case_id=pk).order_by("run_id").values_list("run_id", flat=True))
    list(Run.objects.select_for_update(no_key=True).filter(pk__in=run_ids).order_by("pk").values_list("pk", flat=True))
    return case_lock(pk)
