"""Fixtures of the operator console tests: users in the two console groups, and cases in any state built
through the same services the API uses (plus a bulk builder for the query-count tests)."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from cases import services
from cases.models import Action, CaseRun, CaseState, Checkpoint, Connection, RecoveryCase, Run
from console.access import AUDITORS, OPERATORS, sync_console_groups
from reauth.models import ReconnectRequest
from tests.conftest import DEAD_GRANT

_seq = itertools.count(1)
PASSWORD = "console-test-password-1"


def _staff(username: str, group: str | None, **kw) -> User:
    """A staff user in ``group``. The groups come from a migration; a transactional test before this one may have
    flushed them, so they are synced again (idempotent)."""
    sync_console_groups(apps)
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=True, **kw)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def operator(db):
    return _staff(f"ann{next(_seq)}", OPERATORS)


@pytest.fixture
def auditor(db):
    return _staff(f"aud{next(_seq)}", AUDITORS)


@pytest.fixture
def superuser(db):
    return _staff(f"root{next(_seq)}", None, is_superuser=True)


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def auditor_client(client, auditor):
    client.force_login(auditor)
    return client


MISCONFIGURED = {
    "status": 401,
    "body": {
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided.",
        "error_codes": [7000215],
    },
}


def _move(case: RecoveryCase, to: str) -> None:
    with transaction.atomic():
        services.case_transition(services.case_lock(case.pk), to=to, actor="test")


@pytest.fixture
def make_case(make_run, make_connection):
    """A case in ``state``, reached through the services, with the seed's run shape.

    ``ambiguous``: an earlier action of the run (``ticket_04``) timed out before the credential failed, so the
    case goes through ``reconciling``. ``awaiting_approval`` reconciles it by hand (the default policy then asks
    for approval).
    """

    def make(
        state: str = CaseState.OPENED,
        *,
        ambiguous: bool = False,
        connection: Connection | None = None,
        run: Run | None = None,
        failure: dict | None = None,
        action_key: str = "send_exec_05",
    ) -> RecoveryCase:
        conn = connection or make_connection()
        run = run or make_run(workflow_name="Nightly executive briefing")
        gen = conn.current_generation
        services.checkpoint_record(run_id=run.pk, checkpoint_id="05", label="prepare brief", actor="worker:test")
        needs_ambiguity = ambiguous or state in (CaseState.RECONCILING, CaseState.AWAITING_APPROVAL)
        if needs_ambiguity:
            services.action_begin(
                run_id=run.pk,
                checkpoint_id="05",
                connection_id=conn.pk,
                action_key="ticket_04",
                generation=gen,
                actor="worker:test",
            )
            services.action_mark_ambiguous(
                run_id=run.pk, action_key="ticket_04", generation=gen, reason="timeout", actor="worker:test"
            )
        services.action_begin(
            run_id=run.pk,
            checkpoint_id="05",
            connection_id=conn.pk,
            action_key=action_key,
            generation=gen,
            actor="worker:test",
        )
        answer = services.action_fail(
            run_id=run.pk,
            action_key=action_key,
            generation=gen,
            provider_error=failure or DEAD_GRANT,
            actor="worker:test",
        )
        case = RecoveryCase.objects.get(reference=answer.case_reference)
        if state == CaseState.OPENED:
            return case
        if state == CaseState.ABANDONED:
            return services.case_abandon(case_id=case.pk, actor="test", reason="test")
        if state == CaseState.AWAITING_OWNER:
            return services.case_await_owner(case_id=case.pk, actor="test")
        services.case_reauthorize(case_id=case.pk, actor="owner")
        if state == CaseState.REAUTHORIZED:
            return RecoveryCase.objects.get(pk=case.pk)
        case = services.case_resume_begin(case_id=case.pk, actor="system:test")
        if state == CaseState.RECONCILING:
            assert case.state == CaseState.RECONCILING
            return case
        if state == CaseState.AWAITING_APPROVAL:
            services.action_reconcile(
                run_id=run.pk,
                action_key="ticket_04",
                found=True,
                evidence={"note": "ticket T-1 exists", "by_hand": True},
                external_ref="T-1",
                actor="operator:seed",
            )
            case = services.case_resume_begin(case_id=case.pk, actor="system:test")
            assert case.state == CaseState.AWAITING_APPROVAL, case.state
            return case
        if needs_ambiguity:
            services.action_reconcile(
                run_id=run.pk,
                action_key="ticket_04",
                found=False,
                evidence={"looked_up": "ticket_04"},
                actor="reconciler:test",
            )
            case = services.case_resume_begin(case_id=case.pk, actor="system:test")
        assert case.state == CaseState.RESUMING, case.state
        if state == CaseState.RESUMING:
            return case
        if state == CaseState.RESUME_FAILED:
            # With on-commit work run at once (live-server tests) the eager delivery may already have failed it.
            case = RecoveryCase.objects.get(pk=case.pk)
            if case.state != CaseState.RESUME_FAILED:
                _move(case, CaseState.RESUME_FAILED)
            return RecoveryCase.objects.get(pk=case.pk)
        # Resumed once the run is past its parked action: it executes and commits it with the new generation.
        services.action_begin(
            run_id=run.pk,
            checkpoint_id="05",
            connection_id=conn.pk,
            action_key=action_key,
            generation=gen + 1,
            actor="worker:test",
        )
        services.action_commit(run_id=run.pk, action_key=action_key, generation=gen + 1, actor="worker:test")
        case = RecoveryCase.objects.get(pk=case.pk)
        assert case.state == CaseState.RESUMED
        if state == CaseState.CLOSED:
            _move(case, CaseState.CLOSED)
            case = RecoveryCase.objects.get(pk=case.pk)
        return case

    return make


BULK_STATES = [
    CaseState.OPENED,
    CaseState.AWAITING_OWNER,
    CaseState.AWAITING_APPROVAL,
    CaseState.RESUME_FAILED,
    CaseState.RECONCILING,
    CaseState.RESUMED,
    CaseState.CLOSED,
]


def bulk_cases(n: int, *, prefix: str = "bulk") -> list[RecoveryCase]:
    """``n`` cases with a connection, a run, a checkpoint, an action, a blocked run and an owner link each,
    written with bulk inserts (the query-count tests need volume, not the path that produced it)."""
    tag = f"{prefix}{next(_seq)}"
    now = timezone.now()
    conns = Connection.objects.bulk_create(
        [
            Connection(
                id=f"conn_{tag}_{i}",
                provider=["entra", "auth0"][i % 2],
                owner_email=f"o{i}@{tag}.example",
                provider_subject=f"sub-{i}",
                provider_tenant=f"tid-{i % 5}",
            )
            for i in range(n)
        ]
    )
    runs = Run.objects.bulk_create(
        [
            Run(
                id=f"run_{tag}_{i}",
                runtime="langgraph",
                workflow_name="Nightly executive briefing",
                state=Run.State.PARKED,
            )
            for i in range(n)
        ]
    )
    cps = Checkpoint.objects.bulk_create([Checkpoint(run=r, checkpoint_id="05", label="prepare brief") for r in runs])
    actions = Action.objects.bulk_create(
        [
            Action(
                run=r,
                action_key="send_exec_05",
                idempotency_key=services.idempotency_key_for(run_id=r.pk, action_key="send_exec_05"),
                connection=c,
                checkpoint=cp,
                state=Action.State.FAILED,
                generation=1,
                attempts=1,
            )
            for r, c, cp in zip(runs, conns, cps, strict=False)
        ]
    )
    cases = RecoveryCase.objects.bulk_create(
        [
            RecoveryCase(
                connection=c,
                rejected_generation=1,
                failure_class="dead_grant",
                provider=c.provider,
                provider_code="AADSTS700082",
                state=BULK_STATES[i % len(BULK_STATES)],
                run=r,
                checkpoint=cp,
                action=a,
            )
            for i, (c, r, cp, a) in enumerate(zip(conns, runs, cps, actions, strict=False))
        ]
    )
    for case in cases:
        case.reference = f"CASERV-{case.pk:04d}"
    RecoveryCase.objects.bulk_update(cases, ["reference"])
    RecoveryCase.objects.filter(pk__in=[c.pk for c in cases]).update(opened_at=now - timedelta(hours=3))
    CaseRun.objects.bulk_create(
        [CaseRun(case=case, run=case.run, checkpoint=case.checkpoint, action=case.action) for case in cases]
    )
    ReconnectRequest.objects.bulk_create(
        [
            ReconnectRequest(
                case=case, connection=case.connection, rejected_generation=1, expires_at=now + timedelta(hours=1)
            )
            for case in cases
        ]
    )
    return cases
