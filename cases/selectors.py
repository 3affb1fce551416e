"""Reads of ``cases``: a run's recovery status (the worker API), "a case's ambiguous actions". The console's reads
(its lists, search, case page and dashboard) are ``console.selectors``."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from .errors import RunNotFound
from .models import BLOCKING_CASE_STATES, Action, CaseRun, RecoveryCase, Run


def run_recovery_status(*, run_id: str) -> dict[str, Any]:
    """What a worker (or an operator) needs to know about a run's recovery, without any credential."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        raise RunNotFound(data={"run_id": run_id})
    case_runs = (
        CaseRun.objects.filter(run=run)
        .select_related("case", "case__connection", "checkpoint", "action")
        .order_by("joined_at")
    )
    cases = []
    for cr in case_runs:
        case = cr.case
        cases.append(
            {
                "case_id": case.reference,
                "state": case.state,
                "failure_class": case.failure_class,
                "provider": case.provider,
                "provider_code": case.provider_code,
                "connection_id": case.connection_id,
                "rejected_generation": case.rejected_generation,
                "current_generation": case.connection.current_generation,
                "checkpoint_id": cr.checkpoint.checkpoint_id if cr.checkpoint else None,
                "action_key": cr.action.action_key if cr.action else None,
                "blocking": case.state in BLOCKING_CASE_STATES and cr.resumed_at is None,
                "resumed_at": cr.resumed_at,
            }
        )
    actions = [
        {
            "action_key": a.action_key,
            "state": a.state,
            "generation": a.generation,
            "attempts": a.attempts,
            "idempotency_key": a.idempotency_key,
            "connection_id": a.connection_id,
        }
        for a in Action.objects.filter(run=run).order_by("created_at", "id")
    ]
    latest = run.checkpoints.order_by("-created_at", "-id").first()
    return {
        "run_id": run.pk,
        "runtime": run.runtime,
        "runtime_ref": run.runtime_ref,
        "workflow_name": run.workflow_name,
        "state": run.state,
        "latest_checkpoint": latest.checkpoint_id if latest else None,
        "cases": cases,
        "actions": actions,
    }


def case_ambiguous_actions(case: RecoveryCase | int | list[int]):
    """The actions of a case's runs (or of several cases' runs) whose outcome is unknown (``ambiguous``): what
    reconciliation settles before a resume, by a reconciler, by hand, or in the resumed worker. The one definition
    of "a case's ambiguous actions"."""
    cases = Q(run__case_runs__case_id__in=case) if isinstance(case, list) else Q(run__case_runs__case=case)
    return Action.objects.filter(cases, state=Action.State.AMBIGUOUS).distinct()
