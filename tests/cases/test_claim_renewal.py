"""A dispatch keeps its claim alive while it works, however long; a claim nobody renews ends on its own.

Real threads on PostgreSQL (committed rows: the renewal runs on a connection of its own, as in a Celery pool process).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from cases import outbox
from cases.models import OutboxItem

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = "tests.slow_step"
RELEASE = threading.Event()


@outbox.outbox_handler(SLOW, max_attempts=3)
def _slow_step(item: OutboxItem) -> outbox.Done:
    RELEASE.wait(60)
    return outbox.Done("slow step done")


def owe() -> OutboxItem:
    from django.db import transaction

    with transaction.atomic():
        return outbox.outbox_put(kind=SLOW, key=f"{SLOW}:{time.monotonic_ns()}", payload={})


def test_a_long_dispatch_keeps_its_claim_past_the_claim_length_and_no_second_dispatch_runs(settings, monkeypatch):
    settings.REVIVE_OUTBOX_CLAIM_SECONDS = 3
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: None)  # dispatched by hand below
    item = owe()
    RELEASE.clear()
    outcomes: list[str] = []

    def first_worker() -> None:
        try:
            outcomes.append(outbox.outbox_dispatch(item.pk, delivery="task-A").outcome)
        finally:
            connection.close()

    worker = threading.Thread(target=first_worker)
    worker.start()
    try:
        time.sleep(7)  # more than twice the claim: only the renewal keeps it
        held = OutboxItem.objects.get(pk=item.pk)
        assert held.claimed_by == "task-A" and held.claimed_until > timezone.now()
        assert outbox.outbox_dispatch(item.pk, delivery="task-B").outcome == "busy"
    finally:
        RELEASE.set()
        worker.join(30)
    assert outcomes == ["done"]
    done = OutboxItem.objects.get(pk=item.pk)
    assert (done.state, done.attempts) == ("done", 1)


def test_a_claim_nobody_renews_ends_after_the_claim_length(settings, monkeypatch):
    """What a whole worker killed mid-step leaves: its claim, no renewal. Another message takes the row once the
    claim has run out -- seconds, not the task's time limit."""
    settings.REVIVE_OUTBOX_CLAIM_SECONDS = 3
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: None)
    item = owe()
    OutboxItem.objects.filter(pk=item.pk).update(
        attempts=1, claimed_by="task-dead", claimed_until=timezone.now() + timedelta(seconds=3)
    )
    RELEASE.set()  # the step itself is quick this time
    assert outbox.outbox_dispatch(item.pk, delivery="task-B").outcome == "busy"
    deadline = time.monotonic() + 60
    while outbox.outbox_dispatch(item.pk, delivery="task-B").outcome == "busy":
        assert time.monotonic() < deadline, "the dead claim never ended"
        time.sleep(0.5)
    assert OutboxItem.objects.get(pk=item.pk).state == "done"
