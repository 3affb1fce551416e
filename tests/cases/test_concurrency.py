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
            res = services.action_begin(
                run_id=run.pk,
                checkpoint_id="05",
                connection_id=conn.pk,
                action_key="send",
                generation=generation,
                actor=f"w{generation}",
            )
            if res.decision == "execute":
                services.action_commit(
                    run_id=run.pk, action_key="send", generation=generation, result={"by": generation}, actor="w"
                )
            return res.decision

        return go

    generations = [1, 2, 3] * 8
    results, errors = run_concurrently([attempt(g) for g in generations])
    outcomes = Counter()
    for g, res, err in zip(generations, results, errors, strict=False):
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
        services.action_begin(
            run_id=r.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
        )

    advanced = threading.Event()
    late = set(r.pk for r in runs[::2])  # these commit once the advance has committed: each must be fenced

    def commit(r):
        def go():
            if r.pk in late:
                assert advanced.wait(60)
            return services.action_commit(run_id=r.pk, action_key="send", generation=1, actor="w").state

        return go

    def advance():
        try:
            return services.lease_advance(connection_id=conn.pk, from_generation=1, actor="owner")
        finally:
            advanced.set()

    results, errors = run_concurrently([advance] + [commit(r) for r in runs])
    assert errors[0] is None and results[0] == 2
    fenced = set()
    for r, err in zip(runs, errors[1:], strict=True):
        state = Action.objects.get(run=r).state
        if err is None:
            assert state == "committed"
        else:
            assert getattr(err, "code", None) == "LEASE_FENCED", repr(err)
            fenced.add(r.pk)
            assert state == "executing"  # a fenced commit wrote nothing
    assert late <= fenced  # a stale commit after the advance never gets through
    # every commit that got through was serialised before the advance: its audit event precedes it
    from audit.models import AuditEvent

    advance_id = AuditEvent.objects.get(action="lease.advanced").pk
    assert all(
        e < advance_id for e in AuditEvent.objects.filter(action="action.committed").values_list("pk", flat=True)
    )


def test_concurrent_failure_reports_on_one_generation_open_exactly_one_case(make_run, make_connection):
    conn = make_connection()
    runs = [make_run() for _ in range(16)]

    def report(r):
        return lambda: services.credential_failure_report(
            run_id=r.pk, connection_id=conn.pk, generation=1, provider_error=DEAD_GRANT, checkpoint_id="05", actor="w"
        )

    results, errors = run_concurrently([report(r) for r in runs])
    assert errors == [None] * len(runs)
    assert len({a.case_reference for a in results}) == 1
    assert RecoveryCase.objects.count() == 1
    assert CaseRun.objects.count() == len(runs)


def test_concurrent_first_begins_of_one_action_execute_it_once(make_run, make_connection):
    run, conn = make_run(), make_connection()

    def begin():
        return services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
        ).decision

    results, errors = run_concurrently([begin] * 12)
    assert results.count("execute") == 1
    assert all(getattr(e, "code", None) == "ACTION_IN_PROGRESS" for e in errors if e is not None)
    assert results.count("execute") + sum(e is not None for e in errors) == 12


# --------------------------------------------------------------------------- the one-statement hot path (cases/hotpath.py)


def _wait_for_a_lock_wait(timeout=60.0):
    """Block until some other backend of this database waits for a row lock (generous deadline for a loaded machine)."""
    import time

    deadline = time.monotonic() + timeout
    with connection.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cur.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("no backend ever waited for the connection's lock")


def _hold_generation_advance(conn_id, advanced, release):
    """Advance the generation in a transaction that stays open (holding the connection FOR UPDATE) until released."""
    from django.db import transaction

    def go():
        with transaction.atomic():
            services.lease_advance(connection_id=conn_id, from_generation=1, actor="operator:test")
            advanced.set()
            assert release.wait(120)
        return "advanced"

    return go


def test_a_fast_begin_waiting_on_a_generation_advance_is_fenced_and_writes_nothing(make_run, make_connection):
    """The one-statement begin reads the generation under the connection's share lock: when an advance holds the
    connection, the begin waits, and once the advance commits it re-reads the row and takes no claim."""
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="warm", generation=1, actor="w"
    )
    advanced, release = threading.Event(), threading.Event()

    def begin():
        assert advanced.wait(120)
        return services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
        )

    def let_go():
        assert advanced.wait(120)
        _wait_for_a_lock_wait()  # the begin is now blocked on the connection row
        release.set()
        return "released"

    results, errors = run_concurrently([_hold_generation_advance(conn.pk, advanced, release), begin, let_go])
    assert errors == [None, None, None], errors
    assert results[1].decision == "fenced" and results[1].current_generation == 2
    assert not Action.objects.filter(run=run, action_key="send").exists()


def test_a_fast_commit_waiting_on_a_generation_advance_is_fenced_and_leaves_the_claim(make_run, make_connection):
    run, conn = make_run(), make_connection()
    assert (
        services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
        ).decision
        == "execute"
    )
    advanced, release = threading.Event(), threading.Event()

    def commit():
        assert advanced.wait(120)
        return services.action_commit(run_id=run.pk, action_key="send", generation=1, result={"ok": True}, actor="w")

    def let_go():
        assert advanced.wait(120)
        _wait_for_a_lock_wait()
        release.set()
        return "released"

    results, errors = run_concurrently([_hold_generation_advance(conn.pk, advanced, release), commit, let_go])
    assert errors[0] is None and errors[2] is None, errors
    assert isinstance(errors[1], DomainError) and errors[1].code == "LEASE_FENCED", repr(errors[1])
    action = Action.objects.get(run=run, action_key="send")
    assert (action.state, action.generation, action.result) == ("executing", 1, None)


def test_fast_begins_racing_a_generation_advance_claim_only_under_the_old_generation(make_run, make_connection):
    """Many workers beginning fresh actions with generation 1 while the generation advances: every claim taken was
    taken before the advance (its row says generation 1 and it was answered execute), every begin after it is fenced,
    and nothing is claimed twice."""
    import time

    run, conn = make_run(), make_connection()
    advanced_at: list[float] = []

    def worker(w):
        def go():
            seen = []
            for i in range(400):
                started = time.monotonic()
                res = services.action_begin(
                    run_id=run.pk,
                    checkpoint_id="05",
                    connection_id=conn.pk,
                    action_key=f"w{w}-{i}",
                    generation=1,
                    actor=f"w{w}",
                )
                seen.append((started, f"w{w}-{i}", res.decision))
                if res.decision == "fenced":
                    break
            return seen

        return go

    def advance():
        time.sleep(0.2)
        services.lease_advance(connection_id=conn.pk, from_generation=1, actor="operator:test")
        advanced_at.append(time.monotonic())
        return "advanced"

    results, errors = run_concurrently([worker(w) for w in range(4)] + [advance])
    assert errors == [None] * 5, errors
    attempts = [a for seen in results[:4] for a in seen]
    assert {d for _, _, d in attempts} <= {"execute", "fenced"}
    executed = {key for _, key, d in attempts if d == "execute"}
    fenced = {key for _, key, d in attempts if d == "fenced"}
    assert len(fenced) == 4  # every worker reached the new generation
    assert all(started < advanced_at[0] for started, _, d in attempts if d == "execute")
    rows = dict(Action.objects.filter(run=run).values_list("action_key", "generation"))
    assert set(rows) == executed and set(rows.values()) <= {1}
    assert Counter(Action.objects.filter(run=run).values_list("state", flat=True)) == {"executing": len(executed)}


def test_the_hot_path_survives_a_connection_the_server_dropped(make_run, make_connection):
    """The one-statement path stands in for Django's per-request health check: a dead reused connection is replaced."""
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="warm", generation=1, actor="w"
    )
    import psycopg
    from django.conf import settings as django_settings

    pid = connection.connection.info.backend_pid
    dsn = connection.get_connection_params()
    with psycopg.connect(
        host=dsn.get("host"), port=dsn.get("port"), user=dsn.get("user"), dbname=dsn["dbname"], autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    res = services.action_begin(
        run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key="send", generation=1, actor="w"
    )
    assert res.decision == "execute"
    assert connection.connection.info.backend_pid != pid
    assert (
        services.action_commit(run_id=run.pk, action_key="send", generation=1, result={"ok": 1}, actor="w").state
        == "committed"
    )
