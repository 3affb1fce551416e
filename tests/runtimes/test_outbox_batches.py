"""Resume deliveries go out in batches: one dispatch message per ``REVIVE_OUTBOX_BATCH_SIZE`` rows, each row still
delivered exactly once -- when a batch is delivered again after its worker died, and when the sweep sends what a
lost batch left pending. The last test runs a real Celery worker on Redis."""

from __future__ import annotations

import collections
import re
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from cases import outbox, pipeline, services
from cases.models import OutboxItem, RecoveryCase
from cases.runtimes import reset_adapters
from cases.runtimes.base import ResumeResult
from revive_site.celery import app as celery_app
from tests.runtimes.conftest import wait_for
from tests.runtimes.test_resume import ScriptedAdapter, park


class Killed(BaseException):
    """What a worker killed in the middle of a delivery leaves: nothing after this point runs."""


class DyingAdapter(ScriptedAdapter):
    """Records every delivery; the run named in ``die_on`` kills its worker the first time it is delivered."""

    die_on: set = set()

    def resume(self, case, new_generation, *, run, request):
        ScriptedAdapter.calls.append((run.pk, tuple(request.case_ids), dict(request.generations)))
        if run.pk in DyingAdapter.die_on:
            DyingAdapter.die_on.discard(run.pk)
            raise Killed()
        return ResumeResult(detail={"scripted": True})


@pytest.fixture
def dying(settings):
    settings.REVIVE_RUNTIME_ADAPTERS = {
        **settings.REVIVE_RUNTIME_ADAPTERS,
        "langgraph": "tests.runtimes.test_outbox_batches.DyingAdapter",
    }
    settings.REVIVE_RECONCILERS = {}
    settings.REVIVE_OUTBOX_BATCH_SIZE = 4
    reset_adapters()
    ScriptedAdapter.calls, DyingAdapter.die_on = [], set()
    yield DyingAdapter
    reset_adapters()


@pytest.fixture
def messages(monkeypatch):
    """The dispatch messages sent (each a list of row ids); none reaches a worker: the test delivers them."""
    sent: list[list[int]] = []
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: sent.append(list(item_ids)))
    return sent


def released_case(make_connection, make_run, messages, n: int):
    """``n`` runs parked on one connection, one reconnect, its reconciliation run: the case owes ``n`` deliveries."""
    conn = make_connection()
    runs = [make_run() for _ in range(n)]
    case = [park(run, conn) for run in runs][0]
    with transaction.atomic():
        pipeline.recovery_reauthorized(case_id=case.pk, actor="owner")
    reconcile = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    assert [reconcile.pk] in messages
    messages.clear()
    assert outbox.outbox_dispatch_many([reconcile.pk], "task-reconcile")[reconcile.pk].outcome == "done"
    assert RecoveryCase.objects.get(pk=case.pk).state == "resuming"
    return case, runs, list(messages)


def delivered(case) -> collections.Counter:
    return collections.Counter(
        AuditEvent.objects.filter(case_id=case.pk, action="run.resume_delivered").values_list("run_id", flat=True)
    )


def resume_rows():
    return OutboxItem.objects.filter(kind=services.RESUME_RUN)


@pytest.mark.django_db(transaction=True)
def test_a_released_case_sends_its_deliveries_in_batches_and_each_run_is_delivered_once(
    make_connection, make_run, messages, dying
):
    case, runs, batches = released_case(make_connection, make_run, messages, 10)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(pk for b in batches for pk in b) == sorted(resume_rows().values_list("pk", flat=True))

    for i, batch in enumerate(batches):
        assert outbox.outbox_run(batch, eager=False, delivery=f"task-{i}") == {"done": len(batch)}
    assert sorted(c[0] for c in ScriptedAdapter.calls) == sorted(r.pk for r in runs)
    assert delivered(case) == {r.pk: 1 for r in runs}
    assert set(resume_rows().values_list("state", "attempts", "claimed_until")) == {("done", 1, None)}

    # The same message once more (Redis handed it out twice): every row is done, nothing is delivered again.
    assert outbox.outbox_run(batches[0], eager=False, delivery="task-0") == {"busy": 4}
    assert len(ScriptedAdapter.calls) == 10 and delivered(case) == {r.pk: 1 for r in runs}


@pytest.mark.django_db(transaction=True)
def test_the_task_that_releases_a_case_delivers_its_first_batch_itself_and_sends_the_rest(
    make_connection, make_run, messages, dying
):
    """Reconcile-and-release owes 10 deliveries: the same task delivers the first 4 (no trip through Redis and the
    worker's pool before the first runs get their resume) and sends the other 6 in batches."""
    conn = make_connection()
    runs = [make_run() for _ in range(10)]
    case = [park(run, conn) for run in runs][0]
    with transaction.atomic():
        pipeline.recovery_reauthorized(case_id=case.pk, actor="owner")
    reconcile = OutboxItem.objects.get(kind=services.RECONCILE_CASE)
    messages.clear()
    assert outbox.outbox_run([reconcile.pk], eager=False, delivery="task-reconcile") == {"done": 5}
    assert [len(b) for b in messages] == [4, 2] and len(ScriptedAdapter.calls) == 4
    carried = resume_rows().filter(state="done")
    assert carried.count() == 4 and set(carried.values_list("claimed_by", flat=True)) == {"task-reconcile"}
    for i, batch in enumerate(messages):
        assert outbox.outbox_run(batch, eager=False, delivery=f"task-{i}") == {"done": len(batch)}
    assert delivered(case) == {r.pk: 1 for r in runs} and len(ScriptedAdapter.calls) == 10


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_worker_died_mid_way_is_delivered_again_and_resumes_no_run_twice(
    make_connection, make_run, messages, dying
):
    """The worker dies in the third delivery of a batch of four: the two before it were delivered (and perhaps not
    yet marked done). Redis hands the same message out again (late acknowledgement): the batch takes its own claims
    back, finds the first two delivered, delivers the third -- which never got its resume recorded -- and the fourth."""
    case, runs, batches = released_case(make_connection, make_run, messages, 4)
    (batch,) = batches
    order = [OutboxItem.objects.get(pk=pk).run_id for pk in batch]
    DyingAdapter.die_on = {order[2]}
    with pytest.raises(Killed):
        outbox.outbox_run(batch, eager=False, delivery="task-A")
    assert [c[0] for c in ScriptedAdapter.calls] == order[:3]
    assert delivered(case) == {order[0]: 1, order[1]: 1}
    held = resume_rows().filter(state="pending")
    assert held.exists() and set(held.values_list("claimed_by", flat=True)) == {"task-A"}

    assert outbox.outbox_run(batch, eager=False, delivery="task-A") == {"done": 4}
    calls = collections.Counter(c[0] for c in ScriptedAdapter.calls)
    assert calls == {order[0]: 1, order[1]: 1, order[2]: 2, order[3]: 1}  # the 3rd's first delivery never returned
    assert delivered(case) == {r.pk: 1 for r in runs}
    assert set(resume_rows().values_list("state", flat=True)) == {"done"}


@pytest.mark.django_db(transaction=True)
def test_a_batch_lost_with_its_worker_is_sent_again_by_the_sweep_and_resumes_no_run_twice(
    make_connection, make_run, messages, dying, settings
):
    """The worker dies mid-batch and its message is lost too: the rows it left pending are claimed by a holder that
    never comes back. Once the claim has run out the sweep sends them again, in batches; each run is delivered once."""
    case, runs, batches = released_case(make_connection, make_run, messages, 6)
    first = batches[0]
    order = [OutboxItem.objects.get(pk=pk).run_id for pk in first]
    DyingAdapter.die_on = {order[1]}
    with pytest.raises(Killed):
        outbox.outbox_run(first, eager=False, delivery="task-lost")
    assert outbox.outbox_run(first, eager=False, delivery="task-other") == {"busy": 4}  # a live claim is left alone
    # The claim's end passes (nobody renews it) and so does the rows' grace period: the sweep sends what is pending.
    OutboxItem.objects.filter(claimed_by="task-lost", state="pending").update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )
    messages.clear()
    later = timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS + 1)
    swept = outbox.outbox_sweep(now=later)
    assert set(swept) >= set(resume_rows().filter(state="pending").values_list("pk", flat=True))  # and the owner's mail
    assert all(len(b) <= 4 for b in messages) and sorted(pk for b in messages for pk in b) == sorted(swept)
    for i, batch in enumerate(messages):
        assert set(outbox.outbox_run(batch, eager=False, delivery=f"task-sweep-{i}")) == {"done"}
    assert delivered(case) == {r.pk: 1 for r in runs}
    calls = collections.Counter(c[0] for c in ScriptedAdapter.calls)
    assert calls == {r.pk: 2 if r.pk == order[1] else 1 for r in runs}
    assert set(resume_rows().values_list("state", flat=True)) == {"done"}


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_a_mass_outage_in_batches_each_run_once(make_connection, make_run, celery_worker):
    """A real Celery worker on Redis, batches of 5: 23 runs parked on one connection (resumed by their own worker,
    so the delivery is Revive's alone), one reconnect: every run gets one delivery, through 5 batch messages."""
    celery_worker.ensure(REVIVE_OUTBOX_BATCH_SIZE="5")
    assert not celery_app.conf.task_always_eager
    conn = make_connection()
    runs = [make_run(runtime_ref={"thread_id": f"t-{n}", "graph": "g", "resumed_by": "worker"}) for n in range(23)]
    case = [park(run, conn) for run in runs][0]
    with transaction.atomic():
        pipeline.recovery_reauthorized(case_id=case.pk, actor="owner")  # dispatched to the worker on commit
    wait_for(lambda: sum(delivered(case).values()) >= 23, "every run's delivery to be recorded")
    wait_for(lambda: not resume_rows().exclude(state="done").exists(), "every resume row to be done")
    assert delivered(case) == {r.pk: 1 for r in runs}
    assert resume_rows().count() == 23 and set(resume_rows().values_list("attempts", flat=True)) == {1}
    log = celery_worker.log_path.read_text(errors="replace")
    sizes = sorted(
        int(n) for n in re.findall(r"Task cases\.outbox_dispatch\[[^\]]+\] succeeded in [^:]+: \{'done': (\d+)\}", log)
    )
    # The reconcile row with the first 5 deliveries (carried by its task), then the other 18 in batches of 5 or less.
    assert max(sizes) == 6 and sizes.count(5) >= 3 and sum(sizes) >= 24
