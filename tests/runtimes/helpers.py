"""What the runtime tests do again and again: make a connection, find a run's case, reconnect as the owner."""

from __future__ import annotations

import uuid

from django.db import transaction

from audit.models import AuditEvent
from cases import pipeline, services
from cases.models import CaseRun, RecoveryCase, Run

from .conftest import wait_for


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def connection(prefix: str = "conn") -> str:
    conn_id = new_id(prefix)
    services.connection_create(
        connection_id=conn_id,
        provider="entra",
        owner_email=f"{conn_id}@example.com",
        provider_subject=f"oid-{conn_id}",
        provider_tenant="tid-contoso",
    )
    return conn_id


def case_of(run_id: str, connection_id: str | None = None) -> RecoveryCase:
    qs = RecoveryCase.objects.filter(case_runs__run_id=run_id)
    if connection_id:
        qs = qs.filter(connection_id=connection_id)
    return wait_for(lambda: qs.order_by("-pk").first(), f"a recovery case for {run_id}")


def owner_reconnects(world, case: RecoveryCase) -> RecoveryCase:
    """What the owner's successful callback does: the provider takes the new grant, the generation advances by one,
    and reconcile-and-resume is enqueued on commit."""
    world.restore(case.connection_id)
    with transaction.atomic():
        case = pipeline.recovery_reauthorized(case_id=case.pk, actor="owner:test")
    return case


def run_state(run_id: str) -> str:
    return Run.objects.get(pk=run_id).state


def audit_actions(run_id: str) -> list[str]:
    return list(AuditEvent.objects.filter(run_id=run_id).order_by("pk").values_list("action", flat=True))


def deliveries(run_id: str) -> int:
    return AuditEvent.objects.filter(run_id=run_id, action="run.resume_delivered").values("case_id").distinct().count()


def resumed_case_runs(run_id: str) -> int:
    return CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=False).count()


def task_done(celery_worker, task_id: str) -> bool:
    """The real worker logged the task's end (its log is the only record: the suite runs without a result backend)."""
    log = celery_worker.log_path.read_text(errors="replace")
    return any(task_id in line and (" succeeded " in line or " raised " in line) for line in log.splitlines())
