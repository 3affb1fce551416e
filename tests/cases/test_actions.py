"""At most once per action key: execute, replay, reconcile, fencing and the reaper."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import services
from cases.errors import (
    ActionInProgress,
    ActionNotFound,
    ActionParamsMismatch,
    ActionStateConflict,
    GenerationUnknown,
    LeaseFenced,
    RunNotFound,
)
from cases.models import Action
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db


def begin(run, conn, key="send_exec_05", generation=1, params=None, checkpoint="05"):
    return services.action_begin(
        run_id=run.pk,
        checkpoint_id=checkpoint,
        connection_id=conn.pk,
        action_key=key,
        generation=generation,
        params=params,
        actor="test",
    )


def test_first_begin_executes_with_a_stable_idempotency_key(make_run, make_connection):
    run, conn = make_run(), make_connection()
    res = begin(run, conn)
    assert res.decision == "execute"
    assert res.idempotency_key == services.idempotency_key_for(run_id=run.pk, action_key="send_exec_05")
    assert res.idempotency_key != services.idempotency_key_for(run_id=run.pk, action_key="other")
    action = Action.objects.get(run=run, action_key="send_exec_05")
    assert (action.state, action.generation, action.attempts) == ("executing", 1, 1)


def test_committed_action_replays_its_result_and_never_executes_again(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    services.action_commit(
        run_id=run.pk,
        action_key="send_exec_05",
        generation=1,
        result={"message_id": "m-1"},
        external_ref="m-1",
        actor="test",
    )
    for _ in range(3):
        res = begin(run, conn)
        assert res.decision == "replay"
        assert res.result == {"message_id": "m-1"}
        assert res.external_ref == "m-1"
    assert Action.objects.get(run=run).attempts == 1


def test_commit_is_idempotent(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    for _ in range(2):
        services.action_commit(run_id=run.pk, action_key="send_exec_05", generation=1, result=1, actor="test")
    assert AuditEvent.objects.filter(action="action.committed").count() == 1


def test_executing_action_cannot_be_claimed_twice(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    with pytest.raises(ActionInProgress):
        begin(run, conn)


def test_ambiguous_action_demands_reconciliation_then_absent_executes_exactly_once_more(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    services.action_mark_ambiguous(
        run_id=run.pk, action_key="send_exec_05", generation=1, reason="timeout", actor="test"
    )
    assert begin(run, conn).decision == "reconcile"
    assert begin(run, conn).decision == "reconcile"
    services.action_reconcile(
        run_id=run.pk,
        action_key="send_exec_05",
        found=False,
        evidence={"searched": "mailbox"},
        generation=1,
        actor="test",
    )
    assert begin(run, conn).decision == "execute"
    with pytest.raises(ActionInProgress):
        begin(run, conn)
    action = Action.objects.get(run=run)
    assert (action.state, action.attempts) == ("executing", 2)


def test_reconciled_found_replays_the_found_result(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    services.action_mark_ambiguous(
        run_id=run.pk, action_key="send_exec_05", generation=1, reason="timeout", actor="test"
    )
    services.action_reconcile(
        run_id=run.pk,
        action_key="send_exec_05",
        found=True,
        evidence={"message_id": "m-7"},
        result={"message_id": "m-7"},
        generation=1,
        actor="test",
    )
    res = begin(run, conn)
    assert (res.decision, res.result) == ("replay", {"message_id": "m-7"})


def test_reconcile_refuses_an_action_that_is_not_ambiguous(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    with pytest.raises(ActionStateConflict):
        services.action_reconcile(
            run_id=run.pk, action_key="send_exec_05", found=True, evidence={}, generation=1, actor="t"
        )


def test_same_key_with_different_params_is_refused(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn, params={"to": "ceo@example.com"})
    services.action_commit(run_id=run.pk, action_key="send_exec_05", generation=1, actor="test")
    assert begin(run, conn, params={"to": "ceo@example.com"}).decision == "replay"
    with pytest.raises(ActionParamsMismatch):
        begin(run, conn, params={"to": "someone-else@example.com"})


def test_stale_generation_is_fenced_on_begin_and_commit(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    services.lease_advance(connection_id=conn.pk, from_generation=1, actor="test")
    assert begin(run, conn, key="other", generation=1).decision == "fenced"
    with pytest.raises(LeaseFenced):
        services.action_commit(run_id=run.pk, action_key="send_exec_05", generation=1, actor="test")
    assert Action.objects.get(action_key="send_exec_05").state == "executing"
    assert not Action.objects.filter(action_key="other").exists()


def test_generation_from_the_future_is_refused(make_run, make_connection):
    run, conn = make_run(), make_connection()
    with pytest.raises(GenerationUnknown):
        begin(run, conn, generation=2)


def test_unknown_run_and_action_are_refused(make_run, make_connection):
    run, conn = make_run(), make_connection()
    with pytest.raises(RunNotFound):
        services.action_begin(
            run_id="nope", checkpoint_id="01", connection_id=conn.pk, action_key="a", generation=1, actor="t"
        )
    with pytest.raises(ActionNotFound):
        services.action_commit(run_id=run.pk, action_key="never-begun", generation=1, actor="t")


def test_reaper_marks_only_expired_executing_actions_ambiguous(make_run, make_connection, settings):
    run, conn = make_run(), make_connection()
    begin(run, conn, key="old")
    begin(run, conn, key="fresh")
    Action.objects.filter(action_key="old").update(lock_expires_at=timezone.now() - timedelta(seconds=1))
    reaped = services.reap_stale_actions()
    assert [a.action_key for a in reaped] == ["old"]
    assert Action.objects.get(action_key="old").state == "ambiguous"
    assert Action.objects.get(action_key="fresh").state == "executing"
    assert services.reap_stale_actions() == []
    assert begin(run, conn, key="old").decision == "reconcile"


def test_failed_action_may_execute_again(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    ans = services.action_fail(
        run_id=run.pk,
        action_key="send_exec_05",
        generation=1,
        provider_error={"status": 503, "body": "unavailable"},
        actor="test",
    )
    assert ans.outcome == "retry"
    assert Action.objects.get(run=run).state == "failed"
    assert begin(run, conn).decision == "execute"


def test_dead_grant_failure_parks_the_run_and_begin_answers_parked(make_run, make_connection):
    run, conn = make_run(), make_connection()
    begin(run, conn)
    ans = services.action_fail(
        run_id=run.pk, action_key="send_exec_05", generation=1, provider_error=DEAD_GRANT, actor="test"
    )
    assert (ans.outcome, ans.failure_class, ans.code) == ("parked", "dead_grant", "AADSTS700082")
    assert ans.case_reference.startswith("CASERV-")
    res = begin(run, conn)
    assert (res.decision, res.case_reference) == ("parked", ans.case_reference)
