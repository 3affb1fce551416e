"""The operator console in the Django admin: list, case page, actions, permissions, audit log, dashboard."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.management import call_command
from django.db.models import Q

from audit.models import AuditEvent
from cases import services
from cases.models import Action, CaseState, Checkpoint, RecoveryCase, Run
from console.access import AUDITORS, OPERATORS
from console.selectors import duplicate_effects
from console.timeline import timeline_svg
from console.timeline_rows import timeline_rows
from reauth.models import ReconnectRequest

from .conftest import MISCONFIGURED

pytestmark = pytest.mark.django_db

LIST = "/admin/cases/recoverycase/"


def case_url(case) -> str:
    return f"{LIST}{case.pk}/change/"


def operate_url(case, name: str) -> str:
    return f"{LIST}{case.pk}/operate/{name}/"


def texts(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context and "messages" in response.context else []


def state(case) -> str:
    return RecoveryCase.objects.get(pk=case.pk).state


# --------------------------------------------------------------------------- the list


def test_the_list_shows_the_triage_columns(operator_client, make_case):
    case = make_case(CaseState.OPENED)
    page = operator_client.get(LIST).content.decode()
    for header in [
        "case id",
        "state",
        "failure class",
        "provider / error",
        "connection",
        "tenant",
        "runs blocked",
        "age",
        "owner link",
    ]:
        assert f">{header.capitalize()}<" in page or f">{header}<" in page.lower(), header
    assert case.reference in page and "AADSTS700082" in page and case.connection_id in page and "tid-contoso" in page


def test_the_list_is_ordered_by_urgency_then_age(operator_client, make_case):
    made = {
        s: make_case(s)
        for s in [
            CaseState.CLOSED,
            CaseState.AWAITING_OWNER,
            CaseState.RESUME_FAILED,
            CaseState.AWAITING_APPROVAL,
            CaseState.RECONCILING,
        ]
    }
    page = operator_client.get(LIST).content.decode()
    order = sorted(made, key=lambda s: page.index(f">{made[s].reference}<"))
    assert order == [
        CaseState.RESUME_FAILED,
        CaseState.AWAITING_APPROVAL,
        CaseState.RECONCILING,
        CaseState.AWAITING_OWNER,
        CaseState.CLOSED,
    ]


def test_awaiting_approval_has_its_own_filter(operator_client, make_case):
    waiting = make_case(CaseState.AWAITING_APPROVAL)
    other = make_case(CaseState.OPENED)
    page = operator_client.get(LIST).content.decode()
    assert "?state=awaiting_approval" in page
    filtered = operator_client.get(LIST, {"state": "awaiting_approval"}).content.decode()
    assert f">{waiting.reference}<" in filtered and f">{other.reference}<" not in filtered


@pytest.mark.parametrize(
    "params, expect",
    [
        ({"failure_class": "misconfiguration"}, "misconfigured"),
        ({"provider": "auth0"}, "auth0"),
        ({"tenant": "tid-fabrikam"}, "auth0"),
        ({"state": "open"}, "both"),
        ({"age": "1h"}, "both"),
        ({"age": "older"}, "none"),
    ],
)
def test_the_list_filters(operator_client, make_case, make_connection, params, expect):
    entra = make_case(CaseState.OPENED, failure=MISCONFIGURED)
    auth0 = make_case(CaseState.OPENED, connection=make_connection(provider="auth0", provider_tenant="tid-fabrikam"))
    page = operator_client.get(LIST, params).content.decode()
    shown = {name for name, c in (("misconfigured", entra), ("auth0", auth0)) if f">{c.reference}<" in page}
    assert shown == {"both": {"misconfigured", "auth0"}, "none": set()}.get(expect, {expect})


def test_the_list_searches_case_run_connection_owner_and_action_key(operator_client, make_case, make_connection):
    case = make_case(
        CaseState.OPENED, connection=make_connection(owner_email="Dana@Contoso.example"), action_key="send_exec_77"
    )
    other = make_case(CaseState.OPENED)
    for term in [
        case.reference,
        case.reference.lower(),
        case.run_id,
        case.connection_id,
        "dana@contoso.example",
        "send_exec_77",
    ]:
        page = operator_client.get(LIST, {"q": term}).content.decode()
        assert f">{case.reference}<" in page and f">{other.reference}<" not in page, term
    assert f">{case.reference}<" not in operator_client.get(LIST, {"q": "nothing-like-it"}).content.decode()


def test_the_list_searches_partly_when_nothing_matches_exactly(operator_client, make_case, make_connection):
    case = make_case(
        CaseState.OPENED, connection=make_connection("conn_fabrikam_mail", owner_email="Dana@Contoso.example")
    )
    other = make_case(CaseState.OPENED)
    for term in ["contoso", "FABRIKAM", case.run_id[-6:], case.reference[-4:]]:
        page = operator_client.get(LIST, {"q": term}).content.decode()
        assert f">{case.reference}<" in page and f">{other.reference}<" not in page, term
    for term in ["co", "nothing-like-it"]:  # too short to be tried partly; no part matches
        assert f">{case.reference}<" not in operator_client.get(LIST, {"q": term}).content.decode(), term
    exact = operator_client.get(LIST, {"q": other.run_id}).content.decode()  # an exact match is never widened
    assert f">{other.reference}<" in exact and f">{case.reference}<" not in exact


def test_runs_blocked_and_owner_link_columns(operator_client, make_case, make_run):
    case = make_case(CaseState.OPENED)
    run = make_run()
    from tests.conftest import DEAD_GRANT

    services.credential_failure_report(
        run_id=run.pk, connection_id=case.connection_id, generation=1, provider_error=DEAD_GRANT, actor="worker:test"
    )
    misconfigured = make_case(CaseState.OPENED, failure=MISCONFIGURED)
    moved_on = make_case(CaseState.AWAITING_APPROVAL)  # its link is still "active" until reauth settles it
    rows = {r.pk: r for r in operator_client.get(LIST).context["cl"].result_list}
    assert (rows[case.pk].runs_blocked, rows[case.pk].pending_link_id is not None) == (2, True)
    assert (rows[misconfigured.pk].runs_blocked, rows[misconfigured.pk].pending_link_id) == (1, None)
    assert (rows[moved_on.pk].runs_blocked, rows[moved_on.pk].pending_link_id) == (1, None)


# --------------------------------------------------------------------------- the case page


def test_the_case_page_shows_the_incident_record(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    page = operator_client.get(case_url(case)).content.decode()
    record = page[page.index('id="incident-record"') : page.index("</section>")]
    assert "Nightly executive briefing" in record
    assert f'id="case-id">{case.reference}<' in record
    assert f'id="run">{case.run_id}' in record
    assert 'id="checkpoint">05 / prepare brief<' in record
    assert 'id="action-key">send_exec_05<' in record
    assert 'id="duplicates" class="">0 observed<' in record
    assert 'id="live-transition">03 / 04' in record
    assert 'id="generation">01 rejected → 02 current<' in record
    assert "AADSTS700082" in record
    assert "was reconciled by hand (operator:seed)" in record


def test_the_timeline_comes_from_the_audit_log_with_actor_and_time(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    response = operator_client.get(case_url(case))
    rows = response.context["detail"].timeline
    events = {e.pk: e for e in AuditEvent.objects.filter(pk__in=[r.event_id for r in rows])}
    assert len(events) == len(rows) >= 10
    for row in rows:
        assert (row.actor, row.at, row.action) == (
            events[row.event_id].actor,
            events[row.event_id].occurred_at,
            events[row.event_id].action,
        )
    labels = [r.label for r in rows]
    for expected in [
        "Checkpoint saved",
        "Provider signal: grant rejected (AADSTS700082)",
        "Owner link requested",
        "Access restored: identity verified",
        "Generation advanced",
        "Action run_",
        "Reconciled ",
        "Waiting for an operator's approval",
    ]:
        assert any(label.startswith(expected) for label in labels), expected
    page = response.content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="revive-timeline"' in page
    assert page.count('class="tl-row"') == len(rows)
    assert "operator:seed" in page and 'id="ledger-table"' in page and "ticket_04" in page


def test_the_timeline_shows_a_refused_identity_with_both_identities():
    from types import SimpleNamespace

    from django.utils import timezone

    event = SimpleNamespace(
        pk=1,
        occurred_at=timezone.now(),
        actor="owner",
        action="reconnect.identity_mismatch",
        entity_type="reconnect_request",
        entity_id="x",
        run_id="",
        outcome="refused",
        before=None,
        after={"refusals": 1},
        arguments={
            "rule": "entra",
            "mismatched": ["subject"],
            "expected": {"subject": "oid-1", "tenant": "tid"},
            "presented": {"subject": "oid-2", "tenant": "tid"},
        },
    )
    (row,) = timeline_rows([event])
    assert row.label == "Identity refused" and row.refused
    assert "expected subject=oid-1, tenant=tid; presented subject=oid-2, tenant=tid" in row.detail


def test_the_drawing_escapes_what_it_draws():
    from types import SimpleNamespace

    from django.utils import timezone

    event = SimpleNamespace(
        pk=1,
        occurred_at=timezone.now(),
        actor="operator:<script>alert(1)</script>",
        action="case.abandoned",
        entity_type="case",
        entity_id="CASERV-1",
        run_id="",
        outcome="ok",
        before={"state": "opened"},
        after={"state": "abandoned"},
        arguments={"reason": '"><img src=x>'},
    )
    svg = str(timeline_svg(timeline_rows([event])))
    assert "<script>" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg


@pytest.mark.parametrize(
    "history, expected",
    [
        ([], {}),
        ([("r/a", "action.executing"), ("r/a", "action.committed")], {}),
        ([("r/a", "action.executing"), ("r/a", "action.committed"), ("r/a", "action.executing")], {"r/a": 1}),
        (
            [("r/a", "action.reconciled_committed"), ("r/a", "action.executing"), ("r/a", "action.executing")],
            {"r/a": 2},
        ),
        ([("r/a", "action.executing"), ("r/b", "action.committed"), ("r/a", "action.executing")], {}),
    ],
)
def test_duplicate_effects_count_executions_after_the_effect_was_recorded(history, expected):
    assert duplicate_effects(history) == expected


def test_the_case_page_counts_a_duplicate_from_the_ledger(operator_client, make_case):
    """A second execution after a commit breaks the contract; the record shows it instead of trusting the state."""
    case = make_case(CaseState.RESUMED)
    services.action_commit(run_id=case.run_id, action_key="send_exec_05", generation=2, actor="worker:test")
    assert "0 observed" in operator_client.get(case_url(case)).content.decode()
    from django.db import transaction

    from audit.services import audit_record

    with transaction.atomic():  # what a broken worker would leave in the ledger's history
        audit_record(
            actor="worker:rogue",
            action="action.executing",
            entity_type="action",
            entity_id=f"{case.run_id}/send_exec_05",
            run_id=case.run_id,
        )
    page = operator_client.get(case_url(case)).content.decode()
    assert 'class="bad">1 observed<' in page
    assert f"Executed again after their effect was recorded: {case.run_id}/send_exec_05" in page


def test_live_transition_four_of_four_when_resumed(operator_client, make_case):
    page = operator_client.get(case_url(make_case(CaseState.RESUMED))).content.decode()
    assert 'id="live-transition">04 / 04' in page


# --------------------------------------------------------------------------- acting on one case


def test_approve_from_the_case_page(operator_client, operator, make_case, held_outbox):
    case = make_case(CaseState.AWAITING_APPROVAL)
    page = operator_client.get(case_url(case)).content.decode()
    assert 'id="op-approve"' in page and 'id="op-reject"' in page and 'id="op-retry_resume"' not in page
    response = operator_client.post(operate_url(case, "approve"), {"reason": "ticket T-1 checked"}, follow=True)
    assert response.status_code == 200
    assert state(case) == CaseState.RESUMING
    assert any("approved" in m for m in texts(response))
    assert held_outbox.resumes() == [(case.run_id, case.pk, 2)]
    event = AuditEvent.objects.get(case_id=case.pk, action="case.resuming")
    assert (event.actor, event.arguments["reason"]) == (f"operator:{operator.username}", "ticket T-1 checked")


def test_a_missing_reason_shows_the_form_again(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    response = operator_client.post(operate_url(case, "approve"), {"reason": "  "})
    assert response.status_code == 200 and b"This field is required" in response.content
    assert state(case) == CaseState.AWAITING_APPROVAL


def test_reject_from_the_case_page(operator_client, operator, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    operator_client.post(operate_url(case, "reject"), {"reason": "duplicate ticket"})
    assert state(case) == CaseState.ABANDONED
    event = AuditEvent.objects.get(case_id=case.pk, action="case.abandoned")
    assert event.actor == f"operator:{operator.username}" and event.arguments["rejected"] is True


def test_the_console_shows_a_locked_link_and_the_operator_resends_it(operator_client, operator, make_case, settings):
    case = make_case(CaseState.AWAITING_OWNER)
    old = ReconnectRequest.objects.get(case=case)
    ReconnectRequest.objects.filter(pk=old.pk).update(state="locked", refusals=settings.REVIVE_RECONNECT_MAX_REFUSALS)
    other = make_case(CaseState.AWAITING_OWNER)
    listed = operator_client.get(LIST, {"link": "locked"})
    page = listed.content.decode()
    assert f">{case.reference}<" in page and f">{other.reference}<" not in page
    assert 'class="owner-link-locked">locked</strong>' in page
    detail = operator_client.get(case_url(case)).content.decode()
    assert "locked" in detail and "Resend the owner link" in detail
    response = operator_client.post(operate_url(case, "resend_link"), follow=True)
    assert any("new owner link" in m for m in texts(response))
    new = ReconnectRequest.objects.get(case=case, state="active")
    old.refresh_from_db()
    assert (old.state, old.replaced_by_id) == ("locked", new.pk)
    assert "pending" in operator_client.get(LIST, {"q": case.reference}).content.decode()


def test_resend_the_owner_link(operator_client, operator, make_case):
    case = make_case(CaseState.OPENED)
    old = ReconnectRequest.objects.get(case=case)
    response = operator_client.post(operate_url(case, "resend_link"), follow=True)
    assert any("new owner link" in m for m in texts(response))
    old.refresh_from_db()
    new = ReconnectRequest.objects.get(case=case, state="active")
    assert (old.state, old.revoked_reason, old.replaced_by_id) == ("revoked", "resent", new.pk)
    assert new.created_by == f"operator:{operator.username}"


def test_reconcile_by_hand_needs_a_note_then_waits_for_approval(operator_client, operator, make_case):
    case = make_case(CaseState.RECONCILING)
    action = Action.objects.get(run_id=case.run_id, action_key="ticket_04")
    response = operator_client.post(
        operate_url(case, "reconcile"), {"actions": [action.pk], "outcome": "absent", "note": ""}
    )
    assert response.status_code == 200 and b"This field is required" in response.content
    assert Action.objects.get(pk=action.pk).state == "ambiguous"
    response = operator_client.post(
        operate_url(case, "reconcile"),
        {
            "actions": [action.pk],
            "outcome": "found",
            "note": "ticket T-9 exists in the service desk",
            "external_ref": "T-9",
        },
        follow=True,
    )
    action.refresh_from_db()
    assert (action.state, action.reconciled_by, action.external_ref) == (
        "reconciled_committed",
        f"operator:{operator.username}",
        "T-9",
    )
    assert action.evidence["note"] == "ticket T-9 exists in the service desk"
    assert state(case) == CaseState.AWAITING_APPROVAL  # reconciled by hand: the default policy asks for approval
    assert any("reconciled" in m for m in texts(response))


def test_abandon_with_a_reason(operator_client, make_case):
    case = make_case(CaseState.AWAITING_OWNER)
    operator_client.post(operate_url(case, "abandon"), {"reason": "the owner left"})
    assert state(case) == CaseState.ABANDONED
    assert AuditEvent.objects.get(case_id=case.pk, action="case.abandoned").arguments == {"reason": "the owner left"}


def test_retry_a_failed_resume(operator_client, operator, make_case, held_outbox):
    case = make_case(CaseState.RESUME_FAILED)
    before = held_outbox.resumes()
    operator_client.post(operate_url(case, "retry_resume"))
    assert state(case) == CaseState.RESUMING and held_outbox.resumes()[len(before) :] == [(case.run_id, case.pk, 2)]
    assert AuditEvent.objects.filter(
        case_id=case.pk, action="case.resuming", actor=f"operator:{operator.username}"
    ).exists()


# --------------------------------------------------------------------------- acting on a selection


def select(client, action: str, cases, **extra):
    data = {
        "action": f"operate_{action}",
        "_selected_action": [c.pk for c in cases],
        "index": 0,
        "select_across": 0,
        **extra,
    }
    return client.post(LIST, data, follow=True)


def test_approve_a_selection_with_one_reason(operator_client, make_case, held_outbox):
    cases = [make_case(CaseState.AWAITING_APPROVAL) for _ in range(3)]
    confirm = select(operator_client, "approve", cases)
    assert confirm.status_code == 200 and b'name="reason"' in confirm.content
    assert all(c.reference.encode() in confirm.content for c in cases)
    response = select(operator_client, "approve", cases, apply="1", reason="all three checked")
    assert [state(c) for c in cases] == [CaseState.RESUMING] * 3
    assert sum("approved" in m for m in texts(response)) == 3


def test_a_selection_skips_the_cases_in_the_wrong_state(operator_client, make_case, held_outbox):
    good, bad = make_case(CaseState.AWAITING_APPROVAL), make_case(CaseState.AWAITING_OWNER)
    confirm = select(operator_client, "approve", [good, bad])
    assert b"These are skipped" in confirm.content
    response = select(operator_client, "approve", [good, bad], apply="1", reason="checked")
    assert (state(good), state(bad)) == (CaseState.RESUMING, CaseState.AWAITING_OWNER)
    assert any(
        m.startswith(
            f"{bad.reference} is awaiting owner: only a case awaiting approval can be approved. It was moved to awaiting_owner by test at "
        )
        for m in texts(response)
    )


def test_resend_and_retry_on_a_selection_act_only_once_confirmed(operator_client, make_case, held_outbox):
    opened = [make_case(CaseState.OPENED) for _ in range(2)]
    confirm = select(operator_client, "resend_link", opened)
    assert confirm.content.count(b'class="will-happen"') == 2 and b"e-mails a new link to" in confirm.content
    assert not ReconnectRequest.objects.filter(case__in=opened, created_by__startswith="operator:").exists()
    select(operator_client, "resend_link", opened, apply="1")
    assert (
        ReconnectRequest.objects.filter(case__in=opened, state="active", created_by__startswith="operator:").count()
        == 2
    )
    failed = [make_case(CaseState.RESUME_FAILED) for _ in range(2)]
    confirm = select(operator_client, "retry_resume", failed)
    assert [state(c) for c in failed] == [CaseState.RESUME_FAILED] * 2 and b"re-sends the resume" in confirm.content
    select(operator_client, "retry_resume", failed, apply="1")
    assert [state(c) for c in failed] == [CaseState.RESUMING] * 2


def test_reconcile_a_selection_by_hand(operator_client, make_case):
    cases = [make_case(CaseState.RECONCILING) for _ in range(2)]
    confirm = select(operator_client, "reconcile", cases)
    assert confirm.content.count(b'name="actions"') == 2
    actions = Action.objects.filter(run__case_runs__case__in=cases, state="ambiguous")
    select(
        operator_client,
        "reconcile",
        cases,
        apply="1",
        actions=[a.pk for a in actions],
        outcome="absent",
        note="no ticket in the service desk",
    )
    assert set(Action.objects.filter(pk__in=[a.pk for a in actions]).values_list("state", flat=True)) == {
        "reconciled_absent"
    }
    assert [state(c) for c in cases] == [CaseState.AWAITING_APPROVAL] * 2


# --------------------------------------------------------------------------- wrong states


WRONG = [
    ("approve", CaseState.OPENED, {"reason": "go"}, "only a case awaiting approval can be approved"),
    ("approve", CaseState.RESUMING, {"reason": "go"}, "only a case awaiting approval can be approved"),
    ("reject", CaseState.RESUMING, {"reason": "no"}, "only a case awaiting approval can be rejected"),
    ("resend_link", CaseState.AWAITING_APPROVAL, {}, "only a case waiting for its owner gets a new link"),
    ("resend_link", "misconfigured", {}, "it has no owner link to resend"),
    (
        "reconcile",
        CaseState.CLOSED,
        {"outcome": "found", "note": "n"},
        "only an open case's actions are reconciled here",
    ),
    ("reconcile", CaseState.AWAITING_OWNER, {"outcome": "found", "note": "n"}, "has no ambiguous action to reconcile"),
    ("abandon", CaseState.RESUMED, {"reason": "r"}, "it can no longer be abandoned"),
    ("abandon", CaseState.ABANDONED, {"reason": "r"}, "it can no longer be abandoned"),
    ("retry_resume", CaseState.AWAITING_OWNER, {}, "only a case whose resume failed can be retried"),
    ("retry_resume", CaseState.RESUMING, {}, "only a case whose resume failed can be retried"),
]


def _wrong_case(make_case, start):
    if start == "misconfigured":
        return make_case(CaseState.OPENED, failure=MISCONFIGURED)
    return make_case(start)


@pytest.mark.parametrize("name, start, data, why", WRONG)
def test_every_action_refuses_a_wrong_state_on_the_case_page(
    operator_client, operator, make_case, name, start, data, why
):
    case = _wrong_case(make_case, start)
    before = state(case)
    get = operator_client.get(operate_url(case, name), follow=True)
    assert get.status_code == 200 and any(why in m for m in texts(get))
    response = operator_client.post(operate_url(case, name), data, follow=True)
    assert response.status_code == 200
    assert any(why in m for m in texts(response)), texts(response)
    assert state(case) == before
    refusal = AuditEvent.objects.filter(case_id=case.pk, action="console.refused").latest("id")
    assert (refusal.actor, refusal.outcome, refusal.arguments["operation"]) == (
        f"operator:{operator.username}",
        "refused",
        name,
    )


@pytest.mark.parametrize("name, start, data, why", WRONG)
def test_every_action_refuses_a_wrong_state_on_a_selection(operator_client, make_case, name, start, data, why):
    case = _wrong_case(make_case, start)
    before = state(case)
    response = select(operator_client, name, [case], apply="1", **data)
    assert response.status_code == 200
    assert any(why in m for m in texts(response)), texts(response)
    assert state(case) == before


def test_a_service_refusal_after_the_check_is_a_message_not_a_500(operator_client, make_case, monkeypatch):
    """The case moved on between the console's check and the service's lock: the domain error becomes a message."""
    from cases.errors import CaseTransitionNotAllowed
    from console import operate

    def moved_on(**kw):
        raise CaseTransitionNotAllowed("Case moved on meanwhile.")

    monkeypatch.setattr(operate.services, "case_approve", moved_on)
    case = make_case(CaseState.AWAITING_APPROVAL)
    response = operator_client.post(operate_url(case, "approve"), {"reason": "go"}, follow=True)
    assert response.status_code == 200
    assert any("Case moved on meanwhile. (CASE_TRANSITION_NOT_ALLOWED)" in m for m in texts(response))


def test_an_unknown_operation_or_case_is_a_404(operator_client, make_case):
    case = make_case(CaseState.OPENED)
    assert operator_client.post(operate_url(case, "delete_everything")).status_code == 404
    assert operator_client.post(f"{LIST}999999/operate/approve/", {"reason": "x"}).status_code == 404
    assert (
        operator_client.get(f"{LIST}999999/change/", follow=True).status_code == 200
    )  # admin's "does not exist" redirect


# --------------------------------------------------------------------------- who may do what


def test_the_groups_exist_with_exact_permissions():
    operators = set(Group.objects.get(name=OPERATORS).permissions.values_list("codename", flat=True))
    auditors = set(Group.objects.get(name=AUDITORS).permissions.values_list("codename", flat=True))
    assert operators - auditors == {"operate_case", "view_reconnectrequest"}
    assert {"view_recoverycase", "view_auditevent", "view_operationaudit", "view_action", "view_run"} <= auditors
    assert not {p for p in operators if p.startswith(("add_", "change_", "delete_"))}


def test_the_groups_command_repairs_a_widened_group(auditor):
    from django.contrib.auth.models import Permission

    group = Group.objects.get(name=AUDITORS)
    group.permissions.add(Permission.objects.get(codename="operate_case"))
    call_command("revive_console_groups", stdout=open("/dev/null", "w"))
    assert not auditor.groups.get().permissions.filter(codename="operate_case").exists()
    auditor = type(auditor).objects.get(pk=auditor.pk)
    assert not auditor.has_perm("cases.operate_case") and auditor.has_perm("cases.view_recoverycase")


def test_an_auditor_reads_but_cannot_act(auditor_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)
    page = auditor_client.get(case_url(case)).content.decode()
    assert case.reference in page and 'id="read-only"' in page and 'id="op-approve"' not in page
    listing = auditor_client.get(LIST).content.decode()
    assert case.reference in listing and "operate_approve" not in listing and 'name="_selected_action"' not in listing
    assert auditor_client.get(operate_url(case, "approve")).status_code == 403
    assert auditor_client.post(operate_url(case, "approve"), {"reason": "x"}).status_code == 403
    response = select(auditor_client, "approve", [case], apply="1", reason="x")
    assert response.status_code == 403 and state(case) == CaseState.AWAITING_APPROVAL
    assert auditor_client.get("/admin/audit/auditevent/").status_code == 200
    assert not AuditEvent.objects.filter(case_id=case.pk, action="case.resuming").exists()
    refusals = AuditEvent.objects.filter(case_id=case.pk, action="console.refused").order_by("id")
    assert [e.arguments["operation"] for e in refusals] == ["approve"] * 3  # page, form post, list action
    assert all(
        e.actor.startswith("operator:aud") and "cases.operate_case is required" in e.arguments["why"] for e in refusals
    )


def test_a_user_without_view_permission_sees_nothing(client, make_case, django_user_model):
    case = make_case(CaseState.OPENED)
    user = django_user_model.objects.create_user(username="nobody", password="x", is_staff=True)
    client.force_login(user)
    assert client.get(case_url(case)).status_code == 403
    assert client.get(LIST).status_code == 403
    assert b'id="recovery-dashboard"' not in client.get("/admin/").content


# --------------------------------------------------------------------------- the audit log


@pytest.mark.parametrize("who", ["superuser", "operator"])
def test_the_audit_log_is_read_only_for_everyone(client, make_case, request, who):
    user = request.getfixturevalue(who)
    client.force_login(user)
    make_case(CaseState.OPENED)
    event = AuditEvent.objects.first()
    base = "/admin/audit/auditevent/"
    page = client.get(f"{base}{event.pk}/change/").content.decode()
    assert 'name="_save"' not in page and "deletelink" not in page
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{event.pk}/change/", {"actor": "me"}).status_code == 403
    assert client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    listing = client.get(base).content.decode()
    assert "delete_selected" not in listing
    assert AuditEvent.objects.get(pk=event.pk).actor == event.actor


def test_the_audit_log_is_searchable_by_case_actor_and_action(operator_client, make_case):
    a, b = make_case(CaseState.AWAITING_APPROVAL), make_case(CaseState.OPENED)
    base = "/admin/audit/auditevent/"

    def shown(q):
        return set(operator_client.get(base, {"q": q}).context["cl"].result_list)

    assert {e.case_reference for e in shown(a.reference)} == {a.reference}
    assert {e.case_reference for e in shown(a.reference.lower())} == {a.reference}
    assert {e.actor for e in shown("operator:")} == {"operator:seed"}
    assert {e.action for e in shown("case.awaiting_approval")} == {"case.awaiting_approval"}
    assert {e.action for e in shown("lease.")} == {"lease.advanced"}
    assert b.reference in {e.case_reference for e in shown(b.reference)}


def test_the_audit_log_shows_redacted_json(operator_client, make_run):
    """Redaction is applied when shown too, so a row stored before a rule existed is still not displayed raw."""
    run = make_run(runtime_ref={"thread_id": "t-1", "api_key": "rk-SHOULD-NOT-SHOW"})
    event = AuditEvent.objects.filter(run_id=run.pk, action="run.registered").get()
    page = operator_client.get(f"/admin/audit/auditevent/{event.pk}/change/").content.decode()
    assert "rk-SHOULD-NOT-SHOW" not in page and "REDACTED" in page and "t-1" in page


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_on_the_admin_index(operator_client, make_case, make_connection):
    oldest = make_case(CaseState.AWAITING_OWNER)
    make_case(CaseState.AWAITING_APPROVAL)
    make_case(CaseState.RESUME_FAILED, connection=make_connection(provider="auth0"))
    make_case(CaseState.CLOSED)
    page = operator_client.get("/admin/").content.decode()
    assert 'id="recovery-dashboard"' in page
    table = page[page.index('id="open-by-state-provider"') :]
    table = table[: table.index("</table>")]
    assert (
        "awaiting_owner" in table
        and "awaiting_approval" in table
        and "resume_failed" in table
        and "closed" not in table
    )
    assert re.search(r'id="tile-open"><div class="n">3<', page)
    assert re.search(r'id="tile-24h"><div class="n">4<', page)
    assert re.search(r'id="tile-failures"><div class="n">1<', page)
    assert f">{oldest.reference}</a> (awaiting_owner)" in page
    assert 'id="resume-failures"' in page
    assert 'id="dashboard-timeline"' in page and 'class="revive-timeline"' in page
    assert f'Timeline of <a href="/admin/cases/recoverycase/{oldest.pk}/change/">{oldest.reference}</a>' in page


def test_the_dashboard_draws_the_chosen_case(operator_client, make_case):
    make_case(CaseState.AWAITING_OWNER)
    chosen = make_case(CaseState.RESUMED)
    page = operator_client.get("/admin/", {"case": chosen.reference}).content.decode()
    assert f'Timeline of <a href="/admin/cases/recoverycase/{chosen.pk}/change/">{chosen.reference}</a>' in page
    assert "live transition 04 / 04" in page


# --------------------------------------------------------------------------- no token anywhere


def test_no_admin_page_shows_a_token(client, superuser, make_case, make_run, make_connection):
    """Seed every secret Revive could hold, then read every admin list and object page as a superuser."""
    from reauth.custody import Grant, get_custody
    from reauth.notifications import reconnect_request_notify

    secrets = [
        "at-SECRET-in-result",
        "rt-SECRET-in-evidence",
        "rk-SECRET-in-runtime-ref",
        "at-SECRET-in-custody",
        "rt-SECRET-in-custody",
    ]
    case = make_case(CaseState.OPENED)
    req = ReconnectRequest.objects.get(case=case)
    reconnect_request_notify(request_id=req.pk)
    link_tokens = re.findall(r"rvr_[A-Za-z0-9_-]{43}", mail.outbox[-1].body)
    assert link_tokens
    secrets += link_tokens
    _, raw_key = services.api_key_create(name="console-test-key")
    secrets.append(raw_key)
    run = make_run(runtime_ref={"thread_id": "t-9", "api_key": "rk-SECRET-in-runtime-ref"})
    conn = make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="01", connection_id=conn.pk, action_key="mail", generation=1, actor="w"
    )
    services.action_mark_ambiguous(run_id=run.pk, action_key="mail", generation=1, reason="t", actor="w")
    services.action_reconcile(
        run_id=run.pk,
        action_key="mail",
        found=True,
        generation=None,
        actor="operator:x",
        evidence={"refresh_token": "rt-SECRET-in-evidence", "note": "Bearer at-SECRET-in-result"},
        result={"access_token": "at-SECRET-in-result", "id": "m-1"},
    )
    get_custody().store(
        connection_id=conn.pk,
        generation=1,
        grant=Grant(access_token="at-SECRET-in-custody", refresh_token="rt-SECRET-in-custody"),
    )

    from django.contrib import admin

    client.force_login(superuser)
    pages = ["/admin/", "/admin/?case=" + case.reference, f"{LIST}{case.pk}/operate/abandon/"]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        base = f"/admin/{opts.app_label}/{opts.model_name}/"
        pages.append(base)
        for pk in model_admin.get_queryset(_request(superuser)).values_list("pk", flat=True)[:25]:
            pages.append(f"{base}{pk}/change/")
    for url in pages:
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
        body = response.content.decode()
        for secret in secrets:
            assert secret not in body, (url, secret)
    assert Run.objects.filter(pk=run.pk).exists()


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_allauth_models_are_not_in_the_console(admin_client):
    from django.contrib import admin as django_admin

    labels = {m._meta.app_label for m in django_admin.site._registry}
    assert not labels & {"account", "socialaccount"}
    assert admin_client.get("/admin/socialaccount/socialapp/").status_code == 404


def test_only_operators_may_resend_links_from_the_reconnect_admin(rf):
    from django.contrib import admin as django_admin
    from django.contrib.auth.models import Permission, User

    from reauth.models import ReconnectRequest

    model_admin = django_admin.site._registry[ReconnectRequest]
    viewer = User.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reconnectrequest"))
    request = rf.get("/admin/reauth/reconnectrequest/")
    request.user = User.objects.get(pk=viewer.pk)
    assert "resend_link" not in model_admin.get_actions(request)
    operator = User.objects.create_user("operator", is_staff=True)
    operator.user_permissions.add(
        Permission.objects.get(codename="view_reconnectrequest"), Permission.objects.get(codename="operate_case")
    )
    request.user = User.objects.get(pk=operator.pk)
    assert "resend_link" in model_admin.get_actions(request)


def test_a_refused_resend_in_the_reconnect_admin_is_audited(operator_client, make_case):
    case = make_case(CaseState.RESUMING)  # moved on: its owner link is no longer needed
    req = ReconnectRequest.objects.filter(case=case).first()
    assert req is not None
    operator_client.post(
        "/admin/reauth/reconnectrequest/",
        {"action": "resend_link", "_selected_action": [req.pk], "index": 0, "select_across": 0},
        follow=True,
    )
    refused = AuditEvent.objects.get(action="console.refused", entity_type="reconnect_request")
    assert refused.case_id == case.pk and refused.actor.startswith("operator:ann")
    assert refused.arguments["operation"] == "resend_link" and refused.arguments["code"]


def test_the_skipped_cases_of_a_confirmed_selection_are_audited(operator_client, make_case, held_outbox):
    assert held_outbox is not None  # owed resumes are written, not dispatched
    good, bad = make_case(CaseState.AWAITING_APPROVAL), make_case(CaseState.OPENED)
    confirm = select(operator_client, "approve", [good, bad]).content.decode()
    assert f'class="skipped refused-row" data-case="{bad.reference}"' in confirm
    assert "moves to resuming and sends the resume to its 1 parked run(s)" in confirm
    assert f'name="_selected_action" value="{bad.pk}"' not in confirm  # the confirmation posts back the others only
    refused = AuditEvent.objects.get(case_id=bad.pk, action="console.refused")  # audited when the page skipped it
    assert refused.arguments["operation"] == "approve" and "only a case awaiting approval" in refused.arguments["why"]
    select(operator_client, "approve", [good], apply="1", reason="checked")
    assert state(good) == CaseState.RESUMING


def test_the_case_pages_audit_log_link_lists_every_event_of_the_case(operator_client, make_case):
    case = make_case(CaseState.AWAITING_APPROVAL)  # reconciled by hand: an action event with the run id, no case
    page = operator_client.get(case_url(case)).content.decode()
    link = f"/admin/audit/auditevent/?case={case.pk}"
    assert link in page
    timeline_rows = len(re.findall(r'<tr class="[^"]*" data-action="', page))
    listing = operator_client.get(link).content.decode()
    assert listing.count('class="action-checkbox"') == 0  # read-only, no actions
    reconciled = AuditEvent.objects.get(action="action.reconciled_committed", run_id=case.run_id)
    assert reconciled.case_id is None and f"/admin/audit/auditevent/{reconciled.pk}/change/" in listing
    shown = len(set(re.findall(r"/admin/audit/auditevent/(\d+)/change/", listing)))
    assert (
        shown
        == timeline_rows
        == AuditEvent.objects.filter(
            Q(case_id=case.pk)
            | Q(run_id=case.run_id, case_id__isnull=True, occurred_at__gte=case.checkpoint.created_at)
        ).count()
    )


def test_the_checkpoint_reads_once_and_the_header_says_revive(operator_client, make_case):
    case = make_case(CaseState.OPENED)
    Checkpoint.objects.filter(pk=case.checkpoint_id).update(label="05 / prepare brief")  # as the lab labels it
    page = operator_client.get(case_url(case)).content.decode()
    assert '<dd id="checkpoint">05 / prepare brief</dd>' in page
    assert "Django administration" not in page and "Revive" in page
    assert "<title>" in page and "Revive console" in page
