"""A LangGraph run Revive executes itself is watched past its parked action, until its execution returns.

Real LangGraph on the test database's PostgreSQL, the real adapter and pipeline: the delivery that resumes the run
executes it in Revive's worker. When that worker dies after the run went past its parked action (its case is
``resumed``) and the message that comes back finds the dead worker's claim still held, nobody runs the rest of
the run -- unless the watchdog continues it from its latest checkpoint. When continuing cannot finish it, its case
shows ``resume_failed`` again and the operator's retry continues it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TypedDict

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from audit.models import AuditEvent
from cases import outbox, pipeline, resume, services
from cases.models import Action, CaseState, OutboxItem, RecoveryCase, Run
from cases.runtimes import adapter_for, reset_adapters
from tests.conftest import worker_passes
from tests.runtimes.test_resume import park, reconnect

STEPS: list[str] = []
DIE: list[bool] = []  # each True: the next execution of ``rest`` dies with its process
FAIL: list[bool] = []  # each True: the next execution of ``rest`` raises (the mail service answered 503)


class ProcessDied(BaseException):
    """What SIGKILL does to the worker executing the graph: nothing after it runs, no handler sees it."""


class State(TypedDict, total=False):
    cases: list
    run_id: str
    conn: str


def _wait(state: State) -> dict:
    interrupt({"revive": "parked", "cases": state["cases"]})
    STEPS.append("wait")
    return {}


def _past(state: State) -> dict:
    """The parked action, under the new generation: the run goes past it and its case is resumed."""
    STEPS.append("past")
    assert worker_passes(state["run_id"], state["conn"], "send_2") == "execute"
    return {}


def _rest(state: State) -> dict:
    if DIE and DIE.pop(0):
        raise ProcessDied()
    if FAIL and FAIL.pop(0):
        raise RuntimeError("the mail service answered 503")
    STEPS.append("rest")
    assert worker_passes(state["run_id"], state["conn"], "send_3") == "execute"
    return {}


def graph() -> StateGraph:
    g = StateGraph(State)
    for name, node in (("wait", _wait), ("past", _past), ("rest", _rest)):
        g.add_node(name, node)
    g.add_edge(START, "wait")
    g.add_edge("wait", "past")
    g.add_edge("past", "rest")
    g.add_edge("rest", END)
    return g


@pytest.fixture
def hosted(settings, transactional_db, make_connection, make_run, held_outbox, django_capture_on_commit_callbacks):
    """A run parked in its graph's wait and reconnected: its resume is owed, not yet delivered."""
    settings.REVIVE_LANGGRAPH_GRAPHS = {"hosted-watch": "tests.runtimes.test_hosted_run_watch:graph"}
    settings.REVIVE_LANGGRAPH_CHECKPOINT_URL = ""
    reset_adapters()
    STEPS.clear(), DIE.clear(), FAIL.clear()
    conn = make_connection()
    run = make_run(runtime_ref={"thread_id": uuid.uuid4().hex, "graph": "hosted-watch"})
    case = park(run, conn)
    # The worker's own process ran the graph up to its wait and ended there.
    adapter_for("langgraph").graph("hosted-watch").invoke(
        {"cases": [case.reference], "run_id": run.pk, "conn": conn.pk},
        {"configurable": {"thread_id": run.runtime_ref["thread_id"]}},
    )
    case = reconnect(case, django_capture_on_commit_callbacks)
    assert outbox.outbox_dispatch(OutboxItem.objects.get(kind=services.RECONCILE_CASE).pk).outcome == "done"
    yield run, case
    reset_adapters()


def owed_resume() -> OutboxItem:
    return OutboxItem.objects.get(kind=services.RESUME_RUN, state=OutboxItem.State.PENDING)


def dies_mid_run(item: OutboxItem, run: Run) -> None:
    """The worker delivering ``item`` dies in ``rest``, after the run went past its parked action; its message comes
    back as a new one (the sweep's) while the dead worker's claim on the run still holds, and is answered ``busy``."""
    DIE.append(True)
    with pytest.raises(ProcessDied):
        outbox.outbox_dispatch(item.pk, delivery="task-dead")
    held = timezone.now() + timedelta(seconds=45)
    Run.objects.filter(pk=run.pk).update(
        resume_claimed_until=held, resume_claimed_by="task-dead"
    )  # a kill frees nothing
    OutboxItem.objects.filter(pk=item.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    ran = list(STEPS)
    assert outbox.outbox_dispatch(item.pk, delivery="task-sweep").outcome == "done"  # answered busy: run not touched
    assert ran == STEPS and OutboxItem.objects.get(pk=item.pk).state == OutboxItem.State.DONE
    Run.objects.filter(pk=run.pk).update(resume_claimed_until=timezone.now() - timedelta(seconds=1))  # it runs out


def later(seconds: float = 0) -> datetime:
    return timezone.now() + timedelta(seconds=settings.REVIVE_RUN_STALL_SECONDS + 60 + seconds)


def state_of(case: RecoveryCase) -> str:
    return RecoveryCase.objects.get(pk=case.pk).state


def committed(run: Run) -> dict[str, str]:
    return dict(Action.objects.filter(run=run).values_list("action_key", "state"))


def test_a_run_revive_executes_that_stopped_past_its_parked_action_is_continued_to_its_end(hosted):
    run, case = hosted
    dies_mid_run(owed_resume(), run)
    assert STEPS == ["wait", "past"] and state_of(case) == CaseState.RESUMED
    assert Run.objects.get(pk=run.pk).hosted_at is not None  # its execution never returned

    assert pipeline.runs_watch(now=timezone.now()).continued == []  # not before the stall window
    report = pipeline.runs_watch(now=later())
    assert report.continued == [run.pk] and report.failed == []
    assert pipeline.runs_watch(now=later()).continued == []  # owed once
    continuation = owed_resume()
    assert continuation.payload["attempt"] == 1
    assert outbox.outbox_dispatch(continuation.pk).outcome == "done"

    assert STEPS == ["wait", "past", "rest"]  # from its latest checkpoint: the parked action is not run again
    assert committed(run) == {"send_2": "committed", "send_3": "committed"}
    after = Run.objects.get(pk=run.pk)
    assert (after.state, after.hosted_at, after.continuations) == (Run.State.ACTIVE, None, 0)
    assert pipeline.runs_watch(now=later(600)).continued == []  # finished: nothing left to watch
    event = AuditEvent.objects.get(action="run.continued", run_id=run.pk)
    assert event.arguments["continuation"] == 1 and state_of(case) == CaseState.RESUMED


def test_a_run_that_continuing_cannot_finish_goes_to_an_operator_whose_retry_finishes_it(hosted, settings):
    settings.REVIVE_RESUME_MAX_ATTEMPTS = 1
    run, case = hosted
    dies_mid_run(owed_resume(), run)
    assert pipeline.runs_watch(now=later()).continued == [run.pk]
    dies_mid_run(owed_resume(), run)  # the continuation's worker dies too

    report = pipeline.runs_watch(now=later(120))
    assert report.failed == [run.pk] and report.continued == []
    assert state_of(case) == CaseState.RESUME_FAILED
    failed = AuditEvent.objects.filter(action="case.resume_failed", case_id=case.pk).latest("pk")
    assert "stopped after it went past its parked action" in failed.arguments["reason"]
    assert pipeline.runs_watch(now=later(600)).failed == []  # handed over once, then left to the operator
    assert Run.objects.get(pk=run.pk).state == Run.State.ACTIVE  # not parked: no case would release it

    with transaction.atomic():  # the console's "Retry resume"
        services.case_retry_resume(case_id=case.pk, actor="operator:ana")
        assert resume.case_resume_dispatch(case_id=case.pk, actor="operator:ana") == [run.pk]
    assert outbox.outbox_dispatch(owed_resume().pk).outcome == "done"
    assert STEPS == ["wait", "past", "rest"]
    assert committed(run) == {"send_2": "committed", "send_3": "committed"}
    assert Run.objects.get(pk=run.pk).hosted_at is None
    pipeline.runs_watch(now=later(700))
    assert state_of(case) == CaseState.RESUMED


def test_a_delivery_that_fails_after_the_run_went_past_its_action_leaves_the_run_to_the_watchdog(hosted):
    """The rest of the run raised on the last attempt of its delivery (the dead executor's action still locked,
    say): the run is not parked again -- no case would release it -- and the watchdog continues it."""
    run, case = hosted
    FAIL.append(True)
    item = owed_resume()
    OutboxItem.objects.filter(pk=item.pk).update(max_attempts=1)  # this attempt is its last
    assert outbox.outbox_dispatch(item.pk).outcome == "done"
    assert STEPS == ["wait", "past"] and state_of(case) == CaseState.RESUMED
    assert Run.objects.get(pk=run.pk).state == Run.State.ACTIVE
    assert AuditEvent.objects.filter(action="case.resume_problem", case_id=case.pk).exists()  # on its timeline

    assert pipeline.runs_watch(now=later()).continued == [run.pk]
    assert outbox.outbox_dispatch(owed_resume().pk).outcome == "done"
    assert STEPS == ["wait", "past", "rest"] and committed(run)["send_3"] == "committed"
    assert state_of(case) == CaseState.RESUMED
