"""The recovery lab in the browser, at ``/lab/``: pick a scenario, inject the fault, watch the timeline.

It injects faults (revokes grants, kills processes), so every view is for superusers and the
"Revive lab" group only (``lab.access``; other staff get 403, audited as ``console.refused``), the one write is a CSRF-checked POST, and the pages do not exist when
``REVIVE_PRODUCTION`` is set. One session runs at a time per server process, in a
thread, against this very server (its worker API and reconnect pages).
"""

from __future__ import annotations

import functools
import secrets
import threading
import time

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db import close_old_connections, connection, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from audit.models import AuditEvent
from audit.services import audit_record
from cases.models import RecoveryCase
from cases.namespaces import namespaces_visible_to
from console.case_story import case_story_context
from console.selectors import console_case_detail

from .access import LAB_PERMISSION, may_use_lab
from .runtimes import RUNTIMES
from .session import SESSION_LOCK, run_lab
from .timeline import describe
from .world import PROVIDERS, SCENARIOS

_sessions: dict[str, dict] = {}
_sessions_lock = threading.Lock()


def _lab_enabled() -> None:
    if getattr(settings, "PRODUCTION", False):
        raise Http404("the recovery lab is off in production")


def lab_required(view):
    """Staff sign-in first (else the admin login), then ``lab.use_lab``: a refusal is a 403 and an audit event."""

    @staff_member_required
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        _lab_enabled()
        if not may_use_lab(request.user):
            with transaction.atomic():
                audit_record(
                    actor=f"operator:{request.user.get_username()}",
                    action="console.refused",
                    entity_type="lab",
                    entity_id=request.path[:200],
                    outcome="refused",
                    arguments={
                        "operation": "lab",
                        "method": request.method,
                        "why": f"{LAB_PERMISSION} is required to use the recovery lab",
                    },
                )
            raise PermissionDenied("the recovery lab needs the lab permission")
        return view(request, *args, **kwargs)

    return wrapped


def _run(session: dict, *, scenario: str, provider: str, revive_url: str, runtime: str = "langgraph") -> None:
    try:
        run_lab(
            [scenario],
            provider=provider,
            runtime=runtime,
            revive_url=revive_url,
            out=session["lines"].append,
            on_result=session["results"].append,
            on_run=session["run_ids"].append,
        )
    except Exception as exc:  # shown on the page
        session["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        session["done"] = True
        session["finished"] = time.time()
        connection.close()


@lab_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    session_id = request.GET.get("session", "")
    with _sessions_lock:
        known = session_id in _sessions
    return render(
        request,
        "lab/index.html",
        {
            "scenarios": SCENARIOS.items(),
            "providers": PROVIDERS,
            "runtimes": RUNTIMES,
            "session_id": session_id if known else "",
            "busy": SESSION_LOCK.locked(),
        },
    )


@lab_required
@require_POST
def start(request: HttpRequest) -> HttpResponse:
    scenario, provider = request.POST.get("scenario", ""), request.POST.get("provider", "oidc")
    runtime = request.POST.get("runtime", "langgraph")
    if scenario not in SCENARIOS or provider not in PROVIDERS or runtime not in RUNTIMES:
        return HttpResponse("unknown scenario, provider or runtime", status=400)
    if SESSION_LOCK.locked():
        return HttpResponse("a lab session is already running", status=409)
    session_id = secrets.token_urlsafe(8)
    first = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    session = {
        "scenario": scenario,
        "provider": provider,
        "runtime": runtime,
        "first_event": first,
        "lines": [],
        "results": [],
        "run_ids": [],
        "done": False,
        "error": "",
        "started": time.time(),
        "user": request.user.get_username(),
    }
    with _sessions_lock:
        _sessions[session_id] = session
    revive_url = request.build_absolute_uri("/").rstrip("/")
    close_old_connections()
    threading.Thread(
        target=_run,
        kwargs={
            "session": session,
            "scenario": scenario,
            "provider": provider,
            "revive_url": revive_url,
            "runtime": runtime,
        },
        name=f"lab-{session_id}",
        daemon=True,
    ).start()
    return redirect(f"{reverse('lab:index')}?session={session_id}")


def _session(session_id: str) -> dict:
    with _sessions_lock:
        session = _sessions.get(session_id)
    if session is None:
        raise Http404("no such lab session")
    return session


def _session_cases(session: dict):
    """The cases of the session's own runs: all the lab page shows of the console's data."""
    return RecoveryCase.objects.filter(case_runs__run_id__in=list(session["run_ids"])).distinct().order_by("pk")


@lab_required
@require_GET
def session_state(request: HttpRequest, session_id: str) -> JsonResponse:
    session = _session(session_id)
    events = [describe(e) for e in AuditEvent.objects.filter(id__gt=session["first_event"]).order_by("id")[:500]]
    results = []
    for r in session["results"]:
        r = {k: v for k, v in r.items() if k != "transitions"}
        if r.get("case_pk"):
            r["admin_url"] = reverse("admin:cases_recoverycase_change", args=[r["case_pk"]])
        results.append(r)
    case_pk = _session_cases(session).values_list("pk", flat=True).first()
    return JsonResponse(
        {
            "scenario": session["scenario"],
            "title": SCENARIOS[session["scenario"]],
            "provider": session["provider"],
            "runtime": session["runtime"],
            "done": session["done"],
            "error": session["error"],
            "lines": session["lines"],
            "events": events,
            "results": results,
            "case_pk": case_pk,
            "case_html": reverse("lab:case", args=[session_id, case_pk]) if case_pk else None,
        }
    )


@lab_required
@require_GET
def session_case(request: HttpRequest, session_id: str, case_pk: int) -> HttpResponse:
    """The session's case drawn as the console's case page draws it (``cases/_case_story.html``), as a fragment.

    Only a case of the session's own runs (else 404). Links into the console appear only for a viewer who may
    open those pages there: the lab permission alone does not give the console."""
    session = _session(session_id)
    if not _session_cases(session).filter(pk=case_pk).exists():
        raise Http404("not a case of this lab session")
    detail = console_case_detail(case_id=case_pk)
    if detail is None:
        raise Http404("no such case")
    case = detail.case
    visible = namespaces_visible_to(request.user)
    case_url = audit_url = ""
    if admin.site.get_model_admin(RecoveryCase).has_view_permission(request, case) and (
        visible is None or case.namespace_id in visible
    ):
        case_url = reverse("admin:cases_recoverycase_change", args=[case.pk])
        if admin.site.get_model_admin(AuditEvent).has_view_permission(request):
            audit_url = reverse("admin:audit_auditevent_changelist") + f"?case={case.pk}"
    return render(request, "cases/_case_story.html", case_story_context(detail, case_url=case_url, audit_url=audit_url))
