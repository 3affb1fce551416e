"""The owner's hosted pages.

``/reconnect/l/<token>`` checks the link and binds the browser session to the
request, then redirects to ``/reconnect/r/<public id>/`` so the token leaves
the address bar (and any Referer) at once. Every later page needs that
session binding; the public id alone grants nothing. Sign-in starts from the
landing page's single POST button (CSRF-protected) and comes back through
allauth's callback to ``reauth.adapter``, which redirects to the done or the
refused page. No page ever contains the token, a grant, or a secret.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from allauth.socialaccount.adapter import get_adapter as get_social_adapter
from allauth.socialaccount.providers.base.constants import AuthProcess
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.timesince import timeuntil
from django.views.decorators.cache import never_cache

from audit.models import AuditEvent
from cases.models import CaseState

from . import providers, relink, selectors, services
from .brokers import flows as broker_flows
from .errors import (
    CsrfFailed,
    MethodNotAllowed,
    ReconnectError,
    ReconnectFormInvalid,
    ReconnectIdentityMismatch,
    ReconnectLinkInvalid,
    ReconnectLinkLocked,
    ReconnectLinkUsed,
    ReconnectNextNotAllowed,
    ReconnectNotCompleted,
    ReconnectSessionRequired,
    ReconnectSignInCancelled,
    ReconnectSignInFailed,
)
from .forms import StartForm, next_url_allowed
from .identity import mask_email, mask_identifier
from .models import ReconnectRequest

SESSION_KEY = "revive_reconnect"
MAX_SESSION_GRANTS = 10

FAILURE_TEXT = {
    "dead_grant": "{provider} stopped accepting the saved sign-in for this connection — for example after a password "
    "change, a revoked or long-unused sign-in, or withdrawn consent.",
    "interaction_required": "{provider} needs the account owner to sign in again — for example to complete multi-factor "
    "authentication or to give consent.",
    "relink_required": "{provider} no longer holds a working grant for the account connected to this workflow — it was "
    "revoked or expired at the account's own provider.",
}

# What the owner must do, by the reason the classifier gave (``classifier.Reason``).
OWNER_ACTIONS = {
    "mfa": "When you sign in, complete the multi-factor authentication prompt (for example approve the request in "
    "your authenticator app).",
    "mfa_registration": "When you sign in, you will be asked to register a multi-factor authentication method "
    "(for example the Microsoft Authenticator app); finish the registration.",
    "consent": "When you sign in, review the permissions the workflow asks for and accept them.",
    "compliant_device": "Sign in from a device your organisation manages and marks as compliant (enrolled, for "
    "example, in Intune); on another device the sign-in will be refused.",
    "approved_app": "Sign in with a browser or app your organisation approves; your IT department can say which.",
    "conditional_access": "Your organisation's Conditional Access policy blocked the saved sign-in. Sign in from a "
    "place and device your organisation allows; if it is refused again, contact your IT department.",
    "password_change": "Your password has expired or was changed. Sign in and set a new password when asked.",
    "account_locked": "Your account is locked after too many failed sign-ins. Wait a few minutes (or unlock it with "
    "your organisation's self-service reset), then sign in.",
    "risk": "Your organisation blocked sign-ins for this account because of a security risk. Contact your IT "
    "department to clear it, then sign in.",
    "additional_action": "Your organisation requires a step outside the sign-in (for example registering this "
    "device); the sign-in page explains it.",
    "blocked": "Sign-in is blocked for the moment; the sign-in page says why. If it persists, contact your IT department.",
    "claims_challenge": "The service revoked the session mid-run (for example after a password change, a sign-out "
    "everywhere or a new location). Sign in again: your sign-in carries exactly what the "
    "service asked for.",
    "step_up": "The service asks for a stronger sign-in: sign in with multi-factor authentication when asked.",
    "sign_in": "Sign in again as the same account.",
    "relink": "Re-link the connected account: you will be sent to the account's provider to approve the connection "
    "again. Choose the same account as before; another one will be refused.",
}

# What the done page says about the run once the owner's part is over (the case may already have moved on).
RESUME_STATUS: dict[str, str] = {
    CaseState.REAUTHORIZED: "Access restored; the run resumes next.",
    CaseState.RECONCILING: "Access restored; Revive is checking the action that was in flight, then the run resumes.",
    CaseState.AWAITING_APPROVAL: "Access restored; the run resumes once an operator approves.",
    CaseState.RESUMING: "Access restored; the run is resuming now.",
    CaseState.RESUMED: "The run has resumed.",
    CaseState.CLOSED: "The run has resumed.",
    CaseState.RESUME_FAILED: "Access restored; the workflow's operator is finishing the resume.",
    CaseState.ABANDONED: "Access restored; the workflow's operator closed this case.",
}

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"


def _page(view):
    """Hosted-page hygiene: never cached, never referred to other sites, never indexed, never framed."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "same-origin"  # not no-referrer: browsers then send "Origin: null" and CSRF fails
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Content-Security-Policy"] = _CSP
        return response

    return never_cache(wrapped)


def _allow(method: str):
    """Like ``require_http_methods``, but the 405 is one of our pages with a stable code."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            if request.method != method and not (method == "GET" and request.method == "HEAD"):
                response = problem_response(request, MethodNotAllowed(data={"allowed": [method]}))
                response["Allow"] = method
                return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


# --------------------------------------------------------------------------- session binding


def _session_state(request: HttpRequest) -> dict[str, Any]:
    state = request.session.get(SESSION_KEY)
    if not isinstance(state, dict):
        state = {}
    state.setdefault("grants", {})
    state.setdefault("refusals", {})
    return state


def session_bind(request: HttpRequest, req: ReconnectRequest, *, next_url: str = "") -> None:
    request.session.cycle_key()
    state = _session_state(request)
    grants = state["grants"]
    grants[str(req.public_id)] = {"next": next_url, "at": int(time.time())}
    for stale in sorted(grants, key=lambda k: grants[k].get("at", 0))[:-MAX_SESSION_GRANTS]:
        grants.pop(stale, None)
        state["refusals"].pop(stale, None)
    request.session[SESSION_KEY] = state


def session_has_grant(request: HttpRequest, public_id) -> bool:
    return str(public_id) in _session_state(request)["grants"]


def session_next(request: HttpRequest, public_id) -> str:
    return (_session_state(request)["grants"].get(str(public_id)) or {}).get("next", "")


def session_remember_refusal(request: HttpRequest, public_id, event_id: int) -> None:
    state = _session_state(request)
    state["refusals"][str(public_id)] = event_id
    request.session[SESSION_KEY] = state


# --------------------------------------------------------------------------- rendering


def problem_response(
    request: HttpRequest,
    exc: ReconnectError,
    *,
    req: ReconnectRequest | None = None,
    extra: dict[str, Any] | None = None,
) -> HttpResponse:
    context = {"error": exc, "code": exc.code, "message": exc.message, "req": req}
    if req is not None and req.state == ReconnectRequest.State.ACTIVE and session_has_grant(request, req.public_id):
        context["landing_public_id"] = str(req.public_id)  # "back" only where the reconnect page still works
    context.update(extra or {})
    response = render(request, getattr(exc, "template", "reauth/error.html"), context, status=exc.status)
    response["X-Revive-Code"] = exc.code
    return response


def _summary(req: ReconnectRequest) -> dict[str, Any]:
    case, conn = req.case, req.connection
    run, checkpoint, action = case.run, case.checkpoint, case.action
    provider = conn.get_provider_display()
    return {
        "req": req,
        "case": case,
        "connection": conn,
        "provider_name": provider,
        "workflow_name": run.workflow_name if run is not None else (conn.display_name or conn.pk),
        "run_id": case.run_id or "",
        "broker": conn.get_provider_display() if conn.broker_held else "",
        "checkpoint": (checkpoint.label or checkpoint.checkpoint_id) if checkpoint is not None else "",
        "action_key": action.action_key if action is not None else "",
        "failure_text": FAILURE_TEXT.get(case.failure_class, "{provider} refused the saved sign-in.").format(
            provider=provider
        ),
        "provider_code": case.provider_code,
        "owner_action": OWNER_ACTIONS.get((case.provider_error or {}).get("reason", ""), ""),
        "expected_account": mask_email(conn.owner_email),
        "expected_tenant": conn.provider_tenant if conn.provider == "entra" else "",
        "expected_issuer": conn.provider_issuer,
        "expires_at": req.expires_at,
        "expires_in": timeuntil(req.expires_at) if req.expires_at and req.expires_at > timezone.now() else "",
    }


# --------------------------------------------------------------------------- pages


@_page
@_allow("GET")
def link(request: HttpRequest, token: str) -> HttpResponse:
    next_url = request.GET.get("next", "")
    if not next_url_allowed(next_url, request=request):
        return problem_response(request, ReconnectNextNotAllowed())
    try:
        req = services.reconnect_link_open(token=token)
    except ReconnectError as exc:
        known = exc.data.get("request")  # set only when the token matched: the page may say when and why
        return problem_response(request, exc, req=selectors.reconnect_request_get(known) if known else None)
    session_bind(request, req, next_url=next_url)
    return redirect("reauth:landing", public_id=req.public_id)


def _bound_request(request: HttpRequest, public_id) -> ReconnectRequest:
    req = selectors.reconnect_request_get(public_id)
    if req is None:
        raise ReconnectLinkInvalid()
    if not session_has_grant(request, req.public_id):
        raise ReconnectSessionRequired()
    return req


@_page
@_allow("GET")
def landing(request: HttpRequest, public_id) -> HttpResponse:
    try:
        req = _bound_request(request, public_id)
        services.reconnect_request_check(public_id=req.public_id)
    except ReconnectError as exc:
        return problem_response(request, exc, req=selectors.reconnect_request_get(public_id))
    fresh = selectors.reconnect_request_get(public_id)  # as the check left it
    assert fresh is not None  # it was just found, and requests are never deleted
    req = fresh
    context = _summary(req)
    context["relink"] = _is_relink(req)
    apps = [] if context["relink"] or req.connection.broker_held else providers.sign_in_apps(request, req.connection)
    context["sign_in_app"] = (
        apps[0] if apps else (req.connection.provider if req.connection.broker_held else context["relink"])
    )
    context["attempts_left"] = max(_max_refusals() - req.refusals, 0)
    context["refusals"] = req.refusals
    return render(request, "reauth/landing.html", context)


def _max_refusals() -> int:
    return settings.REVIVE_RECONNECT_MAX_REFUSALS


@_page
@_allow("POST")
def start(request: HttpRequest, public_id) -> HttpResponse:
    """Start the provider sign-in for a bound request (the landing page's button)."""
    try:
        req = _bound_request(request, public_id)
        form = StartForm(request.POST, request=request)
        if not form.is_valid():
            if form.has_error("next", "next_not_allowed"):
                raise ReconnectNextNotAllowed()
            raise ReconnectFormInvalid()
        if _is_relink(req):
            target = relink.relink_begin(request, req)
            if form.cleaned_data["next"]:
                _remember_next(request, req, form.cleaned_data["next"])
            return redirect(target)
        if req.connection.broker_held:
            services.reconnect_sign_in_started(public_id=req.public_id, provider_app=req.connection.provider)
            broker_url = broker_flows.reconnect_start(req.connection)
        else:
            app = providers.sign_in_app_for(request, req.connection)
            services.reconnect_sign_in_started(
                public_id=req.public_id,
                provider_app=app.provider_id,
                claims=(req.case.provider_error or {}).get("claims", ""),
            )
    except ReconnectError as exc:
        return problem_response(request, exc, req=selectors.reconnect_request_get(public_id))
    if form.cleaned_data["next"]:
        _remember_next(request, req, form.cleaned_data["next"])
    if req.connection.broker_held:
        _session_broker_started(request, req, broker_url)
        return redirect("reauth:broker", public_id=req.public_id)
    provider = get_social_adapter(request).get_provider(request, app.provider_id)
    auth_params = providers.sign_in_auth_params(provider, req.connection, req.case)
    return provider.redirect(
        request,
        process=AuthProcess.LOGIN,
        data={"reauth_request": str(req.public_id), "app": app.provider_id},
        auth_params=auth_params,
        scope=provider.get_scope(),
    )


def _is_relink(req: ReconnectRequest) -> bool:
    return req.case.failure_class == "relink_required"


def _remember_next(request: HttpRequest, req: ReconnectRequest, next_url: str) -> None:
    state = _session_state(request)
    state["grants"][str(req.public_id)]["next"] = next_url
    request.session[SESSION_KEY] = state


@_page
@_allow("GET")
def relinked(request: HttpRequest, public_id) -> HttpResponse:
    """The Connected Accounts flow comes back here (``relink.relink_complete``)."""
    try:
        req = _bound_request(request, public_id)
        if request.GET.get("error"):
            raise (
                ReconnectSignInCancelled()
                if request.GET["error"] == "access_denied"
                else ReconnectSignInFailed(data={"reason": "provider"})
            )
        completion = relink.relink_complete(
            request, req, connect_code=request.GET.get("connect_code", ""), state=request.GET.get("state", "")
        )
    except ReconnectError as exc:
        return problem_response(request, exc, req=selectors.reconnect_request_get(public_id))
    if completion.consumed:
        return redirect("reauth:done", public_id=req.public_id)
    assert completion.refusal_event_id is not None  # a sign-in that did not consume the request was refused
    session_remember_refusal(request, req.public_id, completion.refusal_event_id)
    return redirect("reauth:refused", public_id=req.public_id)


@_page
@_allow("GET")
def done(request: HttpRequest, public_id) -> HttpResponse:
    try:
        req = _bound_request(request, public_id)
        if req.state != ReconnectRequest.State.CONSUMED:
            raise ReconnectNotCompleted()
    except ReconnectError as exc:
        return problem_response(request, exc, req=selectors.reconnect_request_get(public_id))
    context = _summary(req)
    context["generation"] = req.case.resumed_generation
    context["rejected_generation"] = req.rejected_generation
    context["resume_status"] = RESUME_STATUS.get(req.case.state, RESUME_STATUS[CaseState.REAUTHORIZED])
    next_url = session_next(request, req.public_id)
    context["next_url"] = next_url if next_url_allowed(next_url, request=request) else ""
    return render(request, "reauth/done.html", context)


def mismatch_differs(mismatched: list[str]) -> str:
    """What the owner has to change, in their words: ``account`` (subject or issuer), else ``tenant``, else
    ``organization``. The account comes first: with another account, tenant and organization do not matter yet."""
    if "subject" in mismatched or "issuer" in mismatched:
        return "account"
    if "tenant" in mismatched:
        return "tenant"
    if "org" in mismatched:
        return "organization"
    return "account"


@_page
@_allow("GET")
def refused(request: HttpRequest, public_id) -> HttpResponse:
    """The identity-mismatch page: who signed in, whom the connection belongs to, what to do."""
    try:
        req = _bound_request(request, public_id)
    except ReconnectError as exc:
        return problem_response(request, exc)
    event_id = _session_state(request)["refusals"].get(str(req.public_id))
    event = (
        AuditEvent.objects.filter(
            pk=event_id, action="reconnect.identity_mismatch", entity_id=str(req.public_id)
        ).first()
        if event_id
        else None
    )
    if event is None:
        return redirect("reauth:landing", public_id=req.public_id)
    presented = (event.arguments or {}).get("presented") or {}
    mismatched = (event.arguments or {}).get("mismatched") or []
    context = _summary(req)
    context.update(
        {
            "signed_in_as": presented.get("label") or mask_identifier(presented.get("subject", "")),
            "signed_in_tenant": presented.get("tenant", ""),
            "signed_in_issuer": presented.get("issuer", ""),
            "signed_in_org": presented.get("org", ""),
            "expected_org": req.connection.provider_org,
            "mismatched": mismatched,
            "differs": mismatch_differs(mismatched),
            "attempts_left": max(_max_refusals() - req.refusals, 0),
            "locked": req.state == ReconnectRequest.State.LOCKED,
            "can_retry": req.state == ReconnectRequest.State.ACTIVE,
            "broker_holds_other_account": req.connection.broker_held,
        }
    )
    error = ReconnectLinkLocked() if context["locked"] else ReconnectIdentityMismatch()
    context.update({"error": error, "code": error.code})
    if context["can_retry"]:
        context["landing_public_id"] = str(req.public_id)
    response = render(request, "reauth/mismatch.html", context, status=error.status)
    response["X-Revive-Code"] = error.code
    return response


# --------------------------------------------------------------------------- broker-held connections


def _session_broker_started(request: HttpRequest, req: ReconnectRequest, url: str) -> None:
    """Remember the broker's page for this request and where the audit log stood, to see this attempt's outcome."""
    state = _session_state(request)
    since = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    state.setdefault("broker", {})[str(req.public_id)] = {"url": url, "since": since}
    request.session[SESSION_KEY] = state


@_page
@_allow("GET")
def broker(request: HttpRequest, public_id) -> HttpResponse:
    """While the owner re-authorizes at the broker: a link to the broker's page; this page follows the outcome.

    The broker tells Revive by webhook (Nango) or status (Scalekit); Revive proves the identity and settles the
    request. This page refreshes itself until then and moves to the done or the refused page.
    """
    try:
        req = _bound_request(request, public_id)
    except ReconnectError as exc:
        return problem_response(request, exc, req=selectors.reconnect_request_get(public_id))
    if req.state == ReconnectRequest.State.CONSUMED:
        return redirect("reauth:done", public_id=req.public_id)
    started = _session_state(request).get("broker", {}).get(str(req.public_id))
    if not started:
        return redirect("reauth:landing", public_id=req.public_id)
    refusal = (
        AuditEvent.objects.filter(
            pk__gt=started["since"], action="reconnect.identity_mismatch", entity_id=str(req.public_id)
        )
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if refusal:
        state = _session_state(request)
        state["broker"][str(req.public_id)]["since"] = refusal
        request.session[SESSION_KEY] = state
        session_remember_refusal(request, req.public_id, refusal)
        return redirect("reauth:refused", public_id=req.public_id)
    try:
        services.reconnect_request_check(public_id=req.public_id)
    except ReconnectLinkUsed:  # consumed since we looked
        return redirect("reauth:done", public_id=req.public_id)
    except ReconnectError as exc:
        return problem_response(request, exc, req=req)
    context = _summary(req)
    context["broker_url"] = started["url"]
    return render(request, "reauth/broker.html", context)


@_page
def not_found(request: HttpRequest) -> HttpResponse:
    return problem_response(request, ReconnectLinkInvalid())


@_page
def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """``CSRF_FAILURE_VIEW``: the same 403 for every form on the site, with a stable code."""
    return problem_response(request, CsrfFailed())
