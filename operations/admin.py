"""The admin's doctor-and-recovery panel: inspect, act once, verify, for people rather than API keys.

``/admin/audit/operationspanel/`` shows Revive's doctor (``operations.doctor``)
and the Restate doctor side by side, and the latest operator attempts. Staff
who hold ``cases.operate_case`` (the "Revive operators" group), and
superusers, also get the three Restate write routes as forms under
``restate/<operation>/``: the form validates with the route's own schema,
a second step shows what will change (from a fresh doctor readout) and asks
for confirmation, and only the confirmed POST calls the service in
``operations.restate.operator``, the very one the API route calls. Read-only staff
(``audit.view_operationaudit``) see the panel, not the forms.

Every confirmed attempt, and every refused POST, writes one operations audit
row with ``operator:<username>``, the role at the time, the admin path, the
arguments under their API names, the reason, start and finish, the outcome and
the error; its request id is shown to the operator. The review step changes
nothing and is not recorded. CSRF protection is the admin's.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from audit.admin import ReadOnlyAdmin
from audit.models import OperationAudit, OperationsPanel
from audit.operations import operation_audit_record
from audit.redaction import redact_url
from revive_site.errors import DomainError

from .doctor import doctor_rows, revive_doctor
from .probes import start, worst_status
from .restate import operator
from .restate.errors import RestateAdminUnreachable
from .restate.forms import (
    CleanupStaleDeploymentsForm,
    ForceRedeployForm,
    RecoverStuckWorkflowForm,
    RestateOperationForm,
)

logger = logging.getLogger(__name__)

OPERATE_PERMISSION = "cases.operate_case"
VIEW_PERMISSION = "audit.view_operationaudit"
RECENT_ATTEMPTS = 15


def can_operate(user) -> bool:
    return bool(user.is_active and user.is_staff and (user.is_superuser or user.has_perm(OPERATE_PERMISSION)))


def can_view(user) -> bool:
    return bool(user.is_active and user.is_staff and (can_operate(user) or user.has_perm(VIEW_PERMISSION)))


def operator_role(user) -> str:
    """The role at the time of the attempt, as the audit row keeps it."""
    if user.is_superuser:
        return "superuser"
    return "staff+operate_case" if user.has_perm(OPERATE_PERMISSION) else "staff"


# --------------------------------------------------------------------------- the three operations


@dataclasses.dataclass(frozen=True)
class RestateOperation:
    slug: str
    title: str
    summary: str
    form_class: type[RestateOperationForm]
    perform: Callable[[Any], str]
    """Call the service with the validated payload; return what happened, for the operator."""
    preview: Callable[[Any, dict[str, Any] | None], list[str]]
    """What the call will change, from the current Restate doctor readout (``None`` when it could not be read)."""


def _deployments(readout: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((readout or {}).get("deployments", {}).get("items", []))


def _describe(deployment: dict[str, Any]) -> str:
    return (
        f"{deployment['id']} at {redact_url(deployment.get('serviceUrl') or '(no URL)')} "
        f"(created {deployment.get('createdAt') or 'unknown'})"
    )


def _force_redeploy(payload) -> str:
    deployment_id = operator.restate_force_redeploy(service_url=payload.serviceUrl, force=payload.force)
    return f"registered {redact_url(payload.serviceUrl)} as deployment {deployment_id}"


def _force_redeploy_preview(payload, readout) -> list[str]:
    lines = [
        f"Register {redact_url(payload.serviceUrl)} with the Restate admin API"
        f"{' (forced registration)' if payload.force else ' (not forced)'} and return its deployment id."
    ]
    lines += [f"Stays registered, neither drained nor deleted: {_describe(d)}" for d in _deployments(readout)]
    return lines


def _cleanup(payload) -> str:
    operator.restate_cleanup_stale_deployments(service_url=payload.serviceUrl, force_drain=payload.forceDrain)
    return (
        f"kept the deployment at {redact_url(payload.serviceUrl)}; stale deployments drained and deleted "
        f"(per-deployment failures are in the log)"
    )


def _cleanup_preview(payload, readout) -> list[str]:
    deployments = _deployments(readout)
    keep = [d for d in deployments if d.get("serviceUrl") == payload.serviceUrl]
    if readout is not None and not keep:
        return [
            f"No registered deployment has exactly the URL {redact_url(payload.serviceUrl)}: the call will fail "
            "with RESTATE_DEPLOYMENT_NOT_FOUND and change nothing."
        ]
    how = (
        "Delete at once, pending invocations or not"
        if payload.forceDrain
        else "Drain (wait, bounded, for invocations pinned to it), then delete"
    )
    lines = [f"Keep: {_describe(d)}" for d in keep[:1]]
    lines += [f"{how}: {_describe(d)}" for d in deployments if not keep or d["id"] != keep[0]["id"]]
    return lines


def _recover(payload) -> str:
    operator.restate_recover_stuck_workflow(service_name=payload.serviceName, service_key=payload.serviceKey)
    return (
        f"purged the terminal-failed invocations of {payload.serviceName}/{payload.serviceKey} and cleared its "
        "keyed state: the next submission starts blank"
    )


def _recover_preview(payload, readout) -> list[str]:
    lines = [
        f"Kill and purge the terminal-failed invocations of {payload.serviceName}/{payload.serviceKey}, then "
        "clear its keyed state. Refused, changing nothing, if an invocation of the key is still active or one "
        "already succeeded."
    ]
    failures = (readout or {}).get("invocations", {}).get("recentFailures", [])
    lines += [
        f"Recent terminal failure of this key: {f['id']} at {f.get('failedAt') or 'unknown'}: "
        f"{f.get('errorMessage') or '(no message)'}"
        for f in failures
        if f.get("serviceName") == payload.serviceName and f.get("serviceKey") == payload.serviceKey
    ]
    return lines


OPERATIONS: dict[str, RestateOperation] = {
    op.slug: op
    for op in [
        RestateOperation(
            "force-redeploy",
            "Force redeploy",
            "Registers the live service URL and returns the new deployment id. Drains and deletes nothing.",
            ForceRedeployForm,
            _force_redeploy,
            _force_redeploy_preview,
        ),
        RestateOperation(
            "cleanup-stale-deployments",
            "Clean up stale deployments",
            "Keeps the deployment registered at exactly this URL; drains and deletes every other one.",
            CleanupStaleDeploymentsForm,
            _cleanup,
            _cleanup_preview,
        ),
        RestateOperation(
            "recover-stuck-workflow",
            "Recover a stuck workflow",
            "Purges a terminal-failed workflow key and clears its state, when retry is safe.",
            RecoverStuckWorkflowForm,
            _recover,
            _recover_preview,
        ),
    ]
}


# --------------------------------------------------------------------------- reads for the pages


def _restate_readout() -> tuple[dict[str, Any] | None, str | None]:
    try:
        return operator.restate_doctor(), None
    except RestateAdminUnreachable as exc:
        return None, f"{exc.code}: {exc.message}"


def _both_doctors() -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """Revive's doctor and the Restate doctor at the same time: the page waits for the slower, not for the sum."""
    restate = start("panel-restate-doctor", _restate_readout)
    revive = revive_doctor()
    readout, error = restate.result()
    return revive, readout, error


# --------------------------------------------------------------------------- the admin


@admin.register(OperationsPanel)
class OperationsPanelAdmin(ReadOnlyAdmin):
    def has_module_permission(self, request) -> bool:
        return can_view(request.user)

    def has_view_permission(self, request, obj=None) -> bool:
        return can_view(request.user)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.panel_view), name="{}_{}_changelist".format(*info)),
            path(
                "restate/<slug:operation>/",
                self.admin_site.admin_view(self.operation_view),
                name="{}_{}_restate".format(*info),
            ),
        ]

    def _operation_url(self, slug: str, **initial: str) -> str:
        url = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_restate", args=[slug], current_app=self.admin_site.name
        )
        return f"{url}?{urlencode(initial)}" if initial else url

    def _panel_url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist", current_app=self.admin_site.name
        )

    def _context(self, request, **extra) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "panel_url": self._panel_url(), **extra}

    # -- the panel ----------------------------------------------------------------

    def panel_view(self, request: HttpRequest) -> HttpResponse:
        if not can_view(request.user):
            raise PermissionDenied
        revive, restate, restate_error = _both_doctors()
        rows = doctor_rows(revive)
        operate = can_operate(request.user)
        deployments = [
            {
                **d,
                "displayUrl": redact_url(d["serviceUrl"]) if d.get("serviceUrl") else None,
                **(
                    {
                        "redeploy_url": self._operation_url("force-redeploy", service_url=d["serviceUrl"]),
                        "keep_url": self._operation_url("cleanup-stale-deployments", service_url=d["serviceUrl"]),
                    }
                    if operate and d.get("serviceUrl")
                    else {}
                ),
            }
            for d in _deployments(restate)
        ]
        failures = [
            {
                **f,
                "recover_url": self._operation_url(
                    "recover-stuck-workflow", service_name=f["serviceName"], service_key=f["serviceKey"]
                ),
            }
            if operate and f.get("serviceKey") and f.get("serviceName")
            else f
            for f in (restate or {}).get("invocations", {}).get("recentFailures", [])
        ]
        context = self._context(
            request,
            title="Doctor and recovery",
            revive_rows=rows,
            revive_status=worst_status(row.status for row in rows),
            restate=restate,
            restate_error=restate_error,
            restate_status=worst_status(part["status"] for part in restate.values()) if restate else None,
            restate_parts=[(name, part) for name, part in (restate or {}).items()],
            deployments=deployments,
            failures=failures,
            can_operate=operate,
            operations=[
                {"title": op.title, "summary": op.summary, "url": self._operation_url(op.slug)}
                for op in OPERATIONS.values()
            ]
            if operate
            else [],
            recent=list(OperationAudit.objects.all()[:RECENT_ATTEMPTS]),
            can_view_audit=request.user.has_perm(VIEW_PERMISSION),
        )
        return TemplateResponse(request, "admin/operations/doctor_panel.html", context)

    # -- the forms ----------------------------------------------------------------

    def operation_view(self, request: HttpRequest, operation: str) -> HttpResponse:
        op = OPERATIONS.get(operation)
        if op is None:
            raise Http404("No such Restate operation.")
        if not can_operate(request.user):
            if request.method == "POST":
                form = op.form_class(request.POST)
                form.is_valid()
                self._audit(
                    request,
                    op,
                    form,
                    request_id=_request_id(),
                    started_at=timezone.now(),
                    outcome=OperationAudit.Outcome.REFUSED,
                    error_code="PERMISSION_DENIED",
                    error=f"{request.user.get_username()} does not hold {OPERATE_PERMISSION}.",
                )
            raise PermissionDenied
        if request.method != "POST":
            initial = {name: request.GET[name] for name in op.form_class.base_fields if name in request.GET}
            return self._render_form(request, op, op.form_class(initial=initial or None))
        form = op.form_class(request.POST)
        if "confirm" not in request.POST:
            if not form.is_valid():
                return self._render_form(request, op, form)
            readout, error = _restate_readout()
            return self._render_form(
                request, op, form, confirming=True, preview=op.preview(form.payload, readout), preview_error=error
            )
        return self._perform(request, op, form)

    def _perform(self, request: HttpRequest, op: RestateOperation, form: RestateOperationForm) -> HttpResponse:
        request_id, started_at = _request_id(), timezone.now()
        if not form.is_valid():
            errors = "; ".join(f"{field or 'form'}: {' '.join(map(str, errs))}" for field, errs in form.errors.items())
            self._audit(
                request,
                op,
                form,
                request_id=request_id,
                started_at=started_at,
                outcome=OperationAudit.Outcome.FAILED,
                error_code="VALIDATION_ERROR",
                error=errors,
            )
            return self._render_form(request, op, form, request_id=request_id)
        try:
            done = op.perform(form.payload)
        except DomainError as exc:
            self._audit(
                request,
                op,
                form,
                request_id=request_id,
                started_at=started_at,
                outcome=OperationAudit.Outcome.FAILED,
                error_code=exc.code,
                error=exc.message,
            )
            form.add_error(None, f"{exc.code}: {exc.message}")
            return self._render_form(request, op, form, request_id=request_id, error_data=exc.data)
        except Exception as exc:
            self._audit(
                request,
                op,
                form,
                request_id=request_id,
                started_at=started_at,
                outcome=OperationAudit.Outcome.FAILED,
                error_code="INTERNAL_ERROR",
                error=repr(exc),
            )
            raise
        self._audit(
            request, op, form, request_id=request_id, started_at=started_at, outcome=OperationAudit.Outcome.SUCCEEDED
        )
        messages.success(
            request,
            f"{op.title}: {done}. Request id {request_id}. "
            "The doctor below is read again: verify the component you changed.",
        )
        return HttpResponseRedirect(self._panel_url())

    def _render_form(self, request, op: RestateOperation, form, **extra) -> TemplateResponse:
        context = self._context(
            request, title=op.title, operation=op, form=form, action_url=self._operation_url(op.slug), **extra
        )
        return TemplateResponse(request, "admin/operations/restate_operation.html", context)

    def _audit(
        self,
        request,
        op: RestateOperation,
        form: RestateOperationForm,
        *,
        request_id: str,
        started_at,
        outcome: str,
        error_code: str = "",
        error: str = "",
    ) -> None:
        reason = (form.cleaned_data.get("reason") if hasattr(form, "cleaned_data") else None) or request.POST.get(
            "reason", ""
        )
        try:
            operation_audit_record(
                request_id=request_id,
                actor=f"operator:{request.user.get_username()}",
                role=operator_role(request.user),
                route=request.path,
                arguments=form.arguments(),
                reason=reason[:2000],
                started_at=started_at,
                finished_at=timezone.now(),
                outcome=outcome,
                error_code=error_code,
                error=error,
            )
        except Exception:  # the operation's outcome stands; a lost row is logged, as the API's middleware does
            logger.exception("operations audit: could not record the %s attempt %s", op.slug, request_id)


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex}"
