"""Operator recovery routes for Restate: parse, call one service, return.

Mounted by :mod:`operations.api` under ``/api/v2/admin/operator/restate/``,
behind the operator key (*system operate*) and the operations audit.
"""

from __future__ import annotations

from ninja import Router

from revive_site.schemas import ErrorOut

from . import operator
from .schemas import (
    AcknowledgedOut,
    CleanupStaleDeploymentsIn,
    DoctorIn,
    DoctorOut,
    ForceRedeployIn,
    ForceRedeployOut,
    RecoverStuckWorkflowIn,
)

router = Router(tags=["operator: restate"])
ERRORS = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
    502: ErrorOut,
    503: ErrorOut,
}


@router.post(
    "/doctor",
    response={200: DoctorOut, **ERRORS},
    summary="Read Restate health (changes nothing)",
    operation_id="cases_restate_api_doctor",
)
def doctor(request, payload: DoctorIn):
    return operator.restate_doctor()


@router.post(
    "/force-redeploy",
    response={200: ForceRedeployOut, **ERRORS},
    summary="Register the live service URL; returns the deployment id",
    operation_id="cases_restate_api_force_redeploy",
)
def force_redeploy(request, payload: ForceRedeployIn):
    deployment_id = operator.restate_force_redeploy(service_url=payload.serviceUrl, force=payload.force)
    return {"acknowledged": True, "deploymentId": deployment_id}


@router.post(
    "/cleanup-stale-deployments",
    response={200: AcknowledgedOut, **ERRORS},
    summary="Keep the deployment at serviceUrl; drain and delete every other one",
    operation_id="cases_restate_api_cleanup_stale_deployments",
)
def cleanup_stale_deployments(request, payload: CleanupStaleDeploymentsIn):
    operator.restate_cleanup_stale_deployments(service_url=payload.serviceUrl, force_drain=payload.forceDrain)
    return {"acknowledged": True}


@router.post(
    "/recover-stuck-workflow",
    response={200: AcknowledgedOut, **ERRORS},
    summary="Purge a terminal-failed workflow key and clear its state, when retry is safe",
    operation_id="cases_restate_api_recover_stuck_workflow",
)
def recover_stuck_workflow(request, payload: RecoverStuckWorkflowIn):
    operator.restate_recover_stuck_workflow(service_name=payload.serviceName, service_key=payload.serviceKey)
    return {"acknowledged": True}
