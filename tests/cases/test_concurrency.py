"""Concurrency claims, proven with real threads against PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import close_old_connections, connection

from cases import services
from cases.models import Action, CaseRun, RecoveryCase
from revive_site.errors import DomainError
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(fns, *, timeout=60):
    """Start every callable at the same instant; return (results, errors) in order."""
    barrier = threading.Barrier(len(fns))
    results: list = [None] * len(fns)
    errors: list = [None] * len(fns)

    def worker(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # collected and asserted by the test
            errors[i] = exc
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def test_postgresql_backs_these_tests():
    assert connection.vendor == "postgresql"


def test_many_workers_with_mixed_generations_begin_and_commit_one_action(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.lease_advance(connection_id=conn.pk, from_generation=1, actor="t")
    services.lease_advance(connection_id=conn.pk, from_generation=2, actor="t")  # current generation: 3

    def attempt(generation):
        def go():
            res = services.action_begin(run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send",
                                        generation=generation, actor=f"w{generation}")
            if res.decision == "execute":
                services.action_commit(run_id=run.pk, action_key="send", generation=generation, result={"by": generation}, actor="w")
            return res.decision
        return go

    generations = [1, 2, 3] * 8
    results, errors = run_concurrently([attempt(g) for g in generations])
    outcomes = Counter()
    for g, res, err in zip(generations, results, errors):
        if err is not None:
            assert isinstance(err, DomainError) and err.code == "ACTION_IN_PROGRESS", repr(err)
            assert g == 3
            outcomes["in_progress"] += 1
        else:
            outcomes[res] += 1
            if g < 3:
                assert res == "fenced"
    assert outcomes["execute"] == 1
    assert outcomes["fenced"] == 16
    action = Action.objects.get(run=run, action_key="send")
    assert (action.state, action.generation, action.attempts, action.result) == ("committed", 3, 1, {"by": 3})


def test_generation_advance_racing_with_commits_never_lets_a_stale_commit_through(make_run, make_connection):
    conn = make_connection()
    runs = [make_run() for _ in range(12)]
    for r in runs:
        services.action_begin(run_id=r.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w")

    def commit(r):
        return lambda: services.action_commit(run_id=r.pk, action_key="send", generation=1, actor="w").state

    def advance():
        return services.lease_advance(connection_id=conn.pk, from_generation=1, actor="owner")

    results, errors = run_concurrently([advance] + [commit(r) for r in runs])
    assert errors[0] is None and results[0] == 2
    committed = fenced = 0
    for r, res, err in zip(runs, results[1:], errors[1:]):
        state = Action.objects.get(run=r).state
        if err is None:
            committed += 1
            assert state == "committed"
        else:
            assert getattr(err, "code", None) == "LEASE_FENCED", repr(err)
            fenced += 1
            assert state == "executing"
    assert committed + fenced == len(runs)
    # every commit that got through was serialised before the advance: its audit event precedes it
    from audit.models import AuditEvent

    advance_id = AuditEvent.objects.get(action="lease.advanced").pk
    assert all(e < advance_id for e in AuditEvent.objects.filter(action="action.committed").values_list("pk", flat=True))


def test_concurrent_failure_reports_on_one_generation_open_exactly_one_case(make_run, make_connection):
    conn = make_connection()
    runs = [make_run() for _ in range(16)]

    def report(r):
        return lambda: services.credential_failure_report(run_id=r.pk, connection_id=conn.pk, generation=1,
                                                          provider_error=DEAD_GRANT, checkpoint_id="05", actor="w")

    results, errors = run_concurrently([report(r) for r in runs])
    assert errors == [None] * len(runs)
    assert len({a.case_reference for a in results}) == 1
    assert RecoveryCase.objects.count() == 1
    assert CaseRun.objects.count() == len(runs)


def test_concurrent_first_begins_of_one_action_execute_it_once(make_run, make_connection):
    run, conn = make_run(), make_connection()

    def begin():
        return services.action_begin(run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send",
                                     generation=1, actor="w").decision

    results, errors = run_concurrently([begin] * 12)
    assert results.count("execute") == 1
    assert all(getattr(e, "code", None) == "ACTION_IN_PROGRESS" for e in errors if e is not None)
    assert results.count("execute") + sum(e is not None for e in errors) == 12
