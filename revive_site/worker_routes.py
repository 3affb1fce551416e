"""The worker API: parse, call one service, return.

Every id a worker sends is qualified with its key's namespace before any service sees it, and every id answered
is unqualified again (``cases.namespaces``): a key never reaches, nor learns of, another namespace's data.
"""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from ninja import Path, Router

from cases import refresh, selectors, services
from cases.metrics import action_call_timed, protected_action_decided
from cases.models import Action, Checkpoint, Run
from cases.namespaces import qualify, unqualify

from .schemas import (
    ActionOut,
    AmbiguousIn,
    BeginIn,
    BeginOut,
    CheckpointIn,
    CheckpointOut,
    CommitIn,
    CredentialFailureIn,
    ErrorOut,
    FailIn,
    FailureOut,
    HeartbeatIn,
    HeartbeatOut,
    LeaseOut,
    ReconcileIn,
    RecoveryStatusOut,
    RefreshClaimIn,
    RefreshClaimOut,
    RefreshReleaseIn,
    RunIn,
    RunOut,
)

router = Router(tags=["worker"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut}
ID = Path(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")


def _ns(request) -> str:
    """The namespace of the calling key: every id of the call is read in it."""
    return request.auth.namespace_id


def _run_out(run: Run) -> dict:
    return {
        "run_id": unqualify(run.pk),
        "runtime": run.runtime,
        "runtime_ref": run.runtime_ref,
        "workflow_name": run.workflow_name,
        "state": run.state,
    }


def _action_out(action: Action) -> dict:
    return {
        "run_id": unqualify(action.run_id),
        "action_key": action.action_key,
        "idempotency_key": action.idempotency_key,
        "state": action.state,
        "generation": action.generation,
        "attempts": action.attempts,
        "result": action.result,
        "external_ref": action.external_ref,
    }


def _failure_out(answer: services.FailureAnswer) -> dict:
    out = asdict(answer)
    out["case_id"] = out.pop("case_reference")
    return out


@router.post("/runs", response={200: RunOut, **ERRORS}, summary="Register a run (idempotent)")
def register_run(request, payload: RunIn):
    run = services.run_register(
        run_id=qualify(_ns(request), payload.run_id),
        runtime=payload.runtime,
        runtime_ref=payload.runtime_ref,
        workflow_name=payload.workflow_name,
        actor=request.auth.actor,
        namespace=_ns(request),
    )
    return _run_out(run)


@router.post(
    "/runs/{run_id}/checkpoints", response={200: CheckpointOut, **ERRORS}, summary="Record a checkpoint (idempotent)"
)
def record_checkpoint(request, payload: CheckpointIn, run_id: str = ID):
    cp: Checkpoint = services.checkpoint_record(
        run_id=qualify(_ns(request), run_id),
        checkpoint_id=payload.checkpoint_id,
        label=payload.label,
        runtime_ref=payload.runtime_ref,
        actor=request.auth.actor,
    )
    return {"run_id": run_id, "checkpoint_id": cp.checkpoint_id, "label": cp.label, "runtime_ref": cp.runtime_ref}


@router.get("/runs/{run_id}/recovery", response={200: RecoveryStatusOut, **ERRORS}, summary="A run's recovery status")
def recovery_status(request, run_id: str = ID):
    status = selectors.run_recovery_status(run_id=qualify(_ns(request), run_id))
    status["run_id"] = run_id
    for item in status["cases"] + status["actions"]:
        item["connection_id"] = unqualify(item["connection_id"])
    return status


@router.post(
    "/connections/{connection_id}/lease",
    response={200: LeaseOut, **ERRORS},
    summary="Acquire the connection's current generation",
)
def acquire_lease(request, connection_id: str = ID):
    lease = services.lease_acquire(connection_id=qualify(_ns(request), connection_id))
    return {
        "connection_id": connection_id,
        "generation": lease.generation,
        "usable": lease.usable,
        "case_id": lease.case_reference,
    }


@router.post(
    "/runs/{run_id}/actions/{action_key}/begin", response={200: BeginOut, **ERRORS}, summary="Begin a protected action"
)
def begin_action(request, payload: BeginIn, run_id: str = ID, action_key: str = ID):
    ns = _ns(request)
    with action_call_timed("begin"):
        res = services.action_begin(
            run_id=qualify(ns, run_id),
            checkpoint_id=payload.checkpoint_id,
            connection_id=qualify(ns, payload.connection_id),
            action_key=action_key,
            generation=payload.generation,
            params=payload.params,
            actor=request.auth.actor,
        )
    protected_action_decided(res.decision)
    out = asdict(res)
    out["case_id"] = out.pop("case_reference")
    return out


@router.post(
    "/runs/{run_id}/actions/{action_key}/commit",
    response={200: ActionOut, **ERRORS},
    summary="Commit an executed action",
)
def commit_action(request, payload: CommitIn, run_id: str = ID, action_key: str = ID):
    with action_call_timed("commit"):
        action = services.action_commit(
            run_id=qualify(_ns(request), run_id),
            action_key=action_key,
            generation=payload.generation,
            result=payload.result,
            external_ref=payload.external_ref,
            actor=request.auth.actor,
        )
    return _action_out(action)


@router.post(
    "/runs/{run_id}/actions/{action_key}/heartbeat",
    response={200: HeartbeatOut, **ERRORS},
    summary="Extend an executing action's lock (the worker is alive)",
)
def heartbeat_action(request, payload: HeartbeatIn, run_id: str = ID, action_key: str = ID):
    action = services.action_heartbeat(
        run_id=qualify(_ns(request), run_id),
        action_key=action_key,
        generation=payload.generation,
        actor=request.auth.actor,
    )
    return {
        "run_id": unqualify(action.run_id),
        "action_key": action.action_key,
        "state": action.state,
        "generation": action.generation,
        "lock_expires_at": action.lock_expires_at,
        "lock_seconds": settings.REVIVE_ACTION_LOCK_TIMEOUT,
    }


@router.post(
    "/runs/{run_id}/actions/{action_key}/fail",
    response={200: FailureOut, **ERRORS},
    summary="Report that the provider refused the action",
)
def fail_action(request, payload: FailIn, run_id: str = ID, action_key: str = ID):
    answer = services.action_fail(
        run_id=qualify(_ns(request), run_id),
        action_key=action_key,
        generation=payload.generation,
        provider_error=payload.error.model_dump(),
        actor=request.auth.actor,
    )
    return _failure_out(answer)


@router.post(
    "/runs/{run_id}/actions/{action_key}/ambiguous",
    response={200: ActionOut, **ERRORS},
    summary="Report that the action's outcome is unknown",
)
def mark_ambiguous(request, payload: AmbiguousIn, run_id: str = ID, action_key: str = ID):
    action = services.action_mark_ambiguous(
        run_id=qualify(_ns(request), run_id),
        action_key=action_key,
        generation=payload.generation,
        reason=payload.reason,
        actor=request.auth.actor,
    )
    return _action_out(action)


@router.post(
    "/runs/{run_id}/actions/{action_key}/reconcile",
    response={200: ActionOut, **ERRORS},
    summary="Settle an ambiguous action",
)
def reconcile_action(request, payload: ReconcileIn, run_id: str = ID, action_key: str = ID):
    action = services.action_reconcile(
        run_id=qualify(_ns(request), run_id),
        action_key=action_key,
        generation=payload.generation,
        found=payload.found,
        evidence=payload.evidence,
        result=payload.result,
        external_ref=payload.external_ref,
        actor=request.auth.actor,
    )
    return _action_out(action)


@router.post(
    "/runs/{run_id}/credential-failures", response={200: FailureOut, **ERRORS}, summary="Report a credential failure"
)
def report_credential_failure(request, payload: CredentialFailureIn, run_id: str = ID):
    ns = _ns(request)
    answer = services.credential_failure_report(
        run_id=qualify(ns, run_id),
        connection_id=qualify(ns, payload.connection_id),
        generation=payload.generation,
        provider_error=payload.error.model_dump(),
        checkpoint_id=payload.checkpoint_id,
        action_key=payload.action_key,
        actor=request.auth.actor,
    )
    return _failure_out(answer)


@router.post(
    "/connections/{connection_id}/refresh-claims",
    response={200: RefreshClaimOut, **ERRORS},
    summary="Claim the refresh of a generation's credential (single flight)",
)
def claim_refresh(request, payload: RefreshClaimIn, connection_id: str = ID):
    answer = refresh.refresh_claim(
        connection_id=qualify(_ns(request), connection_id),
        generation=payload.generation,
        holder=payload.holder,
        seen_round=payload.seen_round,
        actor=request.auth.actor,
    )
    return {**asdict(answer), "connection_id": connection_id}


@router.post(
    "/connections/{connection_id}/refresh-claims/release",
    response={200: RefreshClaimOut, **ERRORS},
    summary="Release a refresh claim with its outcome",
)
def release_refresh(request, payload: RefreshReleaseIn, connection_id: str = ID):
    answer = refresh.refresh_release(
        connection_id=qualify(_ns(request), connection_id),
        generation=payload.generation,
        round=payload.round,
        holder=payload.holder,
        outcome=payload.outcome,
        actor=request.auth.actor,
    )
    return {**asdict(answer), "connection_id": connection_id}
