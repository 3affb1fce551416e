"""The operator console's reads: the case list's annotations, search, the case page, the dashboard, a case's audit.

Every read here runs a fixed number of queries whatever the number of cases, runs or actions: counts and flags are
correlated subqueries evaluated for the rows shown, related rows come by select_related.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import BigIntegerField, Case, CharField, Count, IntegerField, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.models import AuditEvent
from cases.models import (
    BLOCKING_CASE_STATES,
    CASE_URGENCY,
    OPEN_CASE_STATES,
    Action,
    CaseRun,
    CaseState,
    Connection,
    RecoveryCase,
    case_urgency,
)
from cases.selectors import case_ambiguous_actions
from cases.services import LIVE_TRANSITIONS, case_resume_approval

from .timeline_rows import live_transition_reached, timeline_rows

TIMELINE_LIMIT = 400
OWNER_WAITING_STATES = (CaseState.OPENED, CaseState.AWAITING_OWNER)


def console_case_queryset(*, now=None):
    """Cases as the console's list shows them: with their connection, urgency, blocked runs and pending owner link.

    Both per-case figures are scalar subqueries on indexed foreign keys, evaluated only for the rows of the page
    (an EXISTS would let the planner hash it over every reconnect request instead).
    """
    now = now or timezone.now()
    blocked = (
        CaseRun.objects.filter(case=OuterRef("pk"), resumed_at__isnull=True)
        .order_by()
        .values("case")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    # A link is pending while the case waits for its owner and an active, unexpired link exists (a request left
    # active after its case moved on is revoked the next time anyone touches it).
    # Through the reverse relation reauth's requests declare: cases does not import reauth.
    link = (
        RecoveryCase.objects.filter(
            Q(reconnect_requests__state="active")
            & (Q(reconnect_requests__expires_at__isnull=True) | Q(reconnect_requests__expires_at__gt=now)),
            pk=OuterRef("pk"),
        )
        .order_by()
        .values("reconnect_requests__pk")[:1]
    )
    latest_link = (
        RecoveryCase.objects.filter(pk=OuterRef("pk"))
        .order_by("-reconnect_requests__created_at", "-reconnect_requests__id")
        .values("reconnect_requests__state")[:1]
    )
    return RecoveryCase.objects.select_related("connection", "assignee").annotate(
        urgency=case_urgency(),
        runs_blocked=Coalesce(Subquery(blocked, output_field=IntegerField()), Value(0)),
        pending_link_id=Case(
            When(state__in=OWNER_WAITING_STATES, then=Subquery(link)), default=None, output_field=BigIntegerField()
        ),
        # The state of the case's latest owner link (``locked`` after too many wrong sign-ins: the operator resends).
        owner_link_state=Subquery(latest_link, output_field=CharField()),
    )


def urgency_ranks(states) -> list[int]:
    """The urgency ranks of ``states``: filtering on them as well keeps a state filter on the urgency index."""
    return [rank for rank, state in enumerate(CASE_URGENCY) if state in states]


SEARCH_DIRECT_LIMIT = 5000
PARTIAL_SEARCH_MIN = 3  # characters: a shorter term that matches nothing exactly matches nothing


def console_case_search(queryset, term: str):
    """Cases matching ``term`` exactly -- or, when nothing does, partly (``_console_case_search_partial``): case id,
    run id (the case's first run or any run it blocks), connection id, owner e-mail (case-insensitive; a pass over
    the connections, which are far fewer than cases), or the key of the case's failed action or of any action of
    its runs.

    The matching case ids are collected first by one UNION ALL of index lookups; up to ``SEARCH_DIRECT_LIMIT`` of
    them, the list is filtered by primary key. A broader match (an action key more than ``SEARCH_DIRECT_LIMIT``
    actions share: one probe of its index says so, before any lookup collects them) walks the list in its own
    order instead and tests each case (``_console_case_search_walk``): a page of matches is found early.
    """
    term = term.strip()[:200]
    if not term:
        return queryset
    actions = Action.objects.filter(action_key=term)
    broad_key = actions.order_by().values_list("pk")[SEARCH_DIRECT_LIMIT : SEARCH_DIRECT_LIMIT + 1]
    if list(broad_key):
        return _console_case_search_walk(queryset, term)
    connections = Connection.objects.filter(Q(pk=term) | Q(owner_email__iexact=term)).values("pk")
    lookups = [
        RecoveryCase.objects.filter(reference=term.upper()).values_list("pk"),
        RecoveryCase.objects.filter(run_id=term).values_list("pk"),
        RecoveryCase.objects.filter(connection_id__in=connections).values_list("pk"),
        RecoveryCase.objects.filter(action_id__in=actions.values("pk")).values_list("pk"),
        CaseRun.objects.filter(run_id=term).values_list("case_id"),
        CaseRun.objects.filter(run_id__in=actions.values("run_id")).values_list("case_id"),
    ]
    # UNION ALL streams, so the LIMIT stops the lookups early on a broad match; duplicates are dropped here.
    found = [pk for (pk,) in lookups[0].union(*lookups[1:], all=True)[: SEARCH_DIRECT_LIMIT + 1]]
    if not found and len(term) >= PARTIAL_SEARCH_MIN:
        return _console_case_search_partial(queryset, term)
    if len(found) <= SEARCH_DIRECT_LIMIT:
        return queryset.filter(pk__in=sorted(set(found)))
    return _console_case_search_walk(queryset, term)


def _console_case_search_walk(queryset, term: str):
    """The cases matching ``term`` exactly (``console_case_search``), as a filter tested case by case while the
    list is walked in its order. The run and action tests are correlated scalar subqueries, each an index probe
    from the case (its runs, then the ledger's unique (run, action key)): an ``IN``/``EXISTS`` there would let
    PostgreSQL hash every match first -- 100,000 actions and their runs for a key every run shares."""
    connections = Connection.objects.filter(Q(pk=term) | Q(owner_email__iexact=term)).values("pk")
    blocked_run = CaseRun.objects.filter(case=OuterRef("pk"), run_id=term).values("pk")[:1]
    run_action = Action.objects.filter(run__case_runs__case=OuterRef("pk"), action_key=term).values("pk")[:1]
    return queryset.alias(
        search_blocked_run=Subquery(blocked_run, output_field=BigIntegerField()),
        search_run_action=Subquery(run_action, output_field=BigIntegerField()),
    ).filter(
        Q(reference=term.upper())
        | Q(run_id=term)
        | Q(connection_id__in=connections)
        | Q(action__action_key=term)
        | Q(search_blocked_run__isnull=False)
        | Q(search_run_action__isnull=False)
    )


def _console_case_search_partial(queryset, term: str):
    """Nothing matched exactly: cases whose id, run id (first or blocked), connection id or owner e-mail contains
    ``term`` (any case). A scan of cases and connections -- the exact lookups above are what stays an index probe
    at scale, so a partial term is only tried when they found nothing."""
    connections = Connection.objects.filter(Q(pk__icontains=term) | Q(owner_email__icontains=term)).values("pk")
    return queryset.filter(
        Q(reference__icontains=term)
        | Q(run__id__icontains=term)
        | Q(connection_id__in=connections)
        | Q(pk__in=CaseRun.objects.filter(run__id__icontains=term).values("case_id"))
    )


@dataclass(frozen=True)
class CaseDetail:
    case: RecoveryCase
    case_runs: list
    ledger: list
    reconnect_requests: list
    timeline: list
    timeline_truncated: bool
    live_transition: int
    duplicate_effects: int
    duplicate_actions: list
    ambiguous: list
    approval: Any

    @property
    def other_runs(self) -> int:
        return max(len(self.case_runs) - 1, 0)


def duplicate_effects(history) -> dict[str, int]:
    """Duplicate effects per action, counted from the ledger's history (``(entity_id, audit action)`` in order).

    A duplicate effect is an execution of an action key that started after the ledger had already recorded that
    action's effect -- committed by the worker, or reconciled as found. The contract forbids it (a committed
    action is replayed, never executed again), so the count is 0 unless the contract was broken; it is counted
    from the history rather than from the action's current state so that a broken contract cannot hide.
    """
    effect_recorded: set[str] = set()
    duplicates: dict[str, int] = {}
    for entity, action in history:
        if action in ("action.committed", "action.reconciled_committed"):
            effect_recorded.add(entity)
        elif action == "action.executing" and entity in effect_recorded:
            duplicates[entity] = duplicates.get(entity, 0) + 1
    return duplicates


def case_audit_q(case: RecoveryCase, *, run_ids: list[str] | None = None) -> Q:
    """The audit events that belong to ``case``: its own, and its runs' events (actions reconciled by hand, their
    checkpoints) since the run reached the case's checkpoint. The case page's timeline, the audit log's case
    filter and the case's CSV export all read this one set."""
    if run_ids is None:
        run_ids = list(CaseRun.objects.filter(case=case).values_list("run_id", flat=True))
        if not run_ids and case.run_id:
            run_ids = [case.run_id]
    checkpoint = case.checkpoint if case.checkpoint_id else None
    since = min(filter(None, [case.opened_at, checkpoint.created_at if checkpoint else None]))
    return Q(case_id=case.pk) | Q(run_id__in=run_ids, occurred_at__gte=since, case_id__isnull=True)


def case_audit_events(*, case_id: str | int):
    """The audit events of one case (``case_audit_q``), oldest first; None when there is no such case."""
    case = (
        RecoveryCase.objects.select_related("checkpoint").filter(pk=int(case_id)).first()
        if str(case_id).isdigit()
        else None
    )
    if case is None:
        return None
    return AuditEvent.objects.filter(case_audit_q(case)).order_by("occurred_at", "id")


def console_case_detail(*, case_id: str | int) -> CaseDetail | None:
    """Everything the case page shows, in a fixed number of queries whatever the size of the case or the database."""
    qs = RecoveryCase.objects.select_related("connection", "run", "checkpoint", "action")
    case_id = str(case_id)
    case = (qs.filter(pk=int(case_id)) if case_id.isdigit() else qs.filter(reference=case_id.upper())).first()
    if case is None:
        return None
    case_runs = list(
        CaseRun.objects.filter(case=case).select_related("run", "checkpoint", "action").order_by("joined_at", "pk")
    )
    run_ids = [cr.run_id for cr in case_runs] or ([case.run_id] if case.run_id else [])
    ledger = list(
        Action.objects.filter(run_id__in=run_ids).select_related("checkpoint").order_by("run_id", "created_at", "pk")
    )
    events = list(
        AuditEvent.objects.filter(case_audit_q(case, run_ids=run_ids)).order_by("occurred_at", "id")[
            : TIMELINE_LIMIT + 1
        ]
    )
    reached = (
        AuditEvent.objects.filter(case_id=case.pk, action__in=list(LIVE_TRANSITIONS))
        .order_by()
        .values_list("action", flat=True)
        .distinct()
    )
    history = (
        AuditEvent.objects.filter(
            run_id__in=run_ids,
            entity_type="action",
            action__in=["action.committed", "action.reconciled_committed", "action.executing"],
        )
        .order_by("id")
        .values_list("entity_id", "action")
    )
    duplicates = duplicate_effects(history)
    requests = list(case.reconnect_requests.order_by("-created_at", "-id"))
    approval = (
        case_resume_approval(case) if case.state in ("reauthorized", "reconciling", "awaiting_approval") else None
    )
    return CaseDetail(
        case=case,
        case_runs=case_runs,
        ledger=ledger,
        reconnect_requests=requests,
        timeline=timeline_rows(events[:TIMELINE_LIMIT]),
        timeline_truncated=len(events) > TIMELINE_LIMIT,
        live_transition=live_transition_reached(reached),
        duplicate_effects=sum(duplicates.values()),
        duplicate_actions=sorted(duplicates),
        ambiguous=[a for a in ledger if a.state == Action.State.AMBIGUOUS],
        approval=approval,
    )


def console_ambiguous_actions(*, case_ids: list[int]) -> list[Action]:
    """The ambiguous actions of the runs of these cases (what an operator may reconcile by hand)."""
    return list(case_ambiguous_actions(case_ids).select_related("run").order_by("run_id", "action_key"))


def console_dashboard(*, now=None, namespaces: list[str] | None = None) -> dict[str, Any]:
    """The admin index: open cases by state and provider, the oldest waiting case, the last 24 hours, resume failures.

    ``namespaces``: only those namespaces' cases (a console user limited to them); None for every namespace.
    """
    now = now or timezone.now()
    cases = RecoveryCase.objects.all() if namespaces is None else RecoveryCase.objects.filter(namespace__in=namespaces)
    events = (
        AuditEvent.objects.all() if namespaces is None else AuditEvent.objects.filter(case_id__in=cases.values("pk"))
    )
    grid: dict[str, dict[str, int]] = {}
    providers: set[str] = set()
    for state, provider, n in (
        cases.filter(state__in=OPEN_CASE_STATES).order_by().values_list("state", "provider").annotate(n=Count("*"))
    ):
        grid.setdefault(state, {})[provider] = n
        providers.add(provider)
    providers_sorted = sorted(providers)
    rows = [
        {
            "state": state.value,
            "label": state.label,
            "cells": [grid[state].get(p, 0) for p in providers_sorted],
            "total": sum(grid[state].values()),
        }
        for state in CASE_URGENCY
        if state in grid
    ]
    oldest = (
        cases.filter(state__in=BLOCKING_CASE_STATES).select_related("connection").order_by("opened_at", "pk").first()
    )
    day_ago = now - timedelta(hours=24)
    failures = list(
        cases.filter(state=CaseState.RESUME_FAILED).select_related("connection").order_by("opened_at", "pk")[:10]
    )
    return {
        "providers": providers_sorted,
        "rows": rows,
        "open_total": sum(r["total"] for r in rows),
        "provider_totals": [sum(grid[s].get(p, 0) for s in grid) for p in providers_sorted],
        "oldest": oldest,
        "oldest_waiting": (now - oldest.opened_at) if oldest else None,
        "opened_24h": cases.filter(opened_at__gte=day_ago).count(),
        "resume_failed_open": sum(grid.get(CaseState.RESUME_FAILED, {}).values()),
        "resume_failures": failures,
        "resume_failures_24h": events.filter(
            action__in=["case.resume_failed", "run.resume_failed"], occurred_at__gte=day_ago
        ).count(),
    }


def _format_link(template: str, fields: dict[str, Any]) -> str | None:
    from urllib.parse import quote

    try:
        return template.format_map({k: quote(str(v), safe="") for k, v in fields.items()})
    except (KeyError, IndexError, ValueError):
        return None  # the template names a field this run does not have


def case_links_out(case: RecoveryCase, case_runs: list[CaseRun]) -> list[tuple[str, str]]:
    """Links to each blocked run in its runtime's own UI and to the connection in its provider's admin, from the
    URL templates in ``REVIVE_RUNTIME_UI_URLS`` / ``REVIVE_PROVIDER_ADMIN_URLS``. Values are URL-quoted; a
    template naming a field the run lacks yields no link. Runtime references are shown as links only, never
    as JSON (they may hold more than ids)."""
    from django.conf import settings

    links = []
    runtime_urls = getattr(settings, "REVIVE_RUNTIME_UI_URLS", {}) or {}
    for cr in case_runs or []:
        template = runtime_urls.get(cr.run.runtime)
        ref = cr.run.runtime_ref if isinstance(cr.run.runtime_ref, dict) else {}
        fields = {k: v for k, v in ref.items() if isinstance(v, (str, int))}
        fields.update(run=cr.run_id, workflow_name=cr.run.workflow_name, runtime=cr.run.runtime)
        url = _format_link(template, fields) if template else None
        if url:
            links.append((f"{cr.run.get_runtime_display()} · {cr.run_id}", url))
    template = (getattr(settings, "REVIVE_PROVIDER_ADMIN_URLS", {}) or {}).get(case.provider)
    conn = case.connection
    url = (
        _format_link(
            template,
            {
                "connection": conn.pk,
                "tenant": conn.provider_tenant,
                "subject": conn.provider_subject,
                "provider": conn.provider,
            },
        )
        if template
        else None
    )
    if url:
        links.append((f"{case.get_provider_display()} admin · {conn.pk}", url))
    return links
