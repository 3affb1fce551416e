"""The transactional outbox: every step Revive owes is a row before it is a message.

A service that owes a side effect (the owner's notification, a reconciliation, a resume delivery) calls
``outbox_put`` inside the transaction that changes the state owing it, so the step exists exactly when the
change commits. Right after the commit ``cases.outbox_dispatch`` is enqueued for it (low latency); if Redis
loses that message or a worker dies running it, ``outbox_sweep`` (beat task ``cases.outbox_sweep``) dispatches
every row still pending after its ``due_at``. Losing a message therefore delays a step; it never loses it.

Each kind has one handler, registered with ``outbox_handler`` by the module that owns the step (``cases.pipeline``
for reconcile and resume, ``reauth.handlers`` for the owner's notification); this module imports neither, so any
app may owe a step without importing the app that performs it. A handler returns ``Done``/``None`` or ``Retry``
(or raises: an unexpected error is retried like a transient one). Every dispatch is one attempt: a row is claimed
by a conditional UPDATE, so two dispatches of one row never run its handler at the same time; after
``max_attempts`` the row is ``failed`` with its last error and its kind's ``on_exhausted`` hook puts the failure
where an operator sees it (the admin's outbox list always shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import audit_record

from .inserts import insert_unless_conflict
from .models import OutboxItem, RecoveryCase

log = logging.getLogger(__name__)

DISPATCH_TASK = "cases.outbox_dispatch"


@dataclasses.dataclass(frozen=True)
class Done:
    """The step happened (or is no longer owed)."""

    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Retry:
    """Not now: dispatch again after ``countdown`` seconds (None: the kind's backoff for this attempt)."""

    error: str
    countdown: float | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    handler: Callable[[OutboxItem], Done | Retry | None]
    max_attempts: Callable[[], int]
    backoff_first: float
    backoff_max: float
    on_exhausted: Callable[[OutboxItem], None] | None


_KINDS: dict[str, Kind] = {}


def outbox_handler(
    kind: str,
    *,
    max_attempts: Callable[[], int] | int = 10,
    backoff_first: float = 1.0,
    backoff_max: float = 300.0,
    on_exhausted: Callable[[OutboxItem], None] | None = None,
):
    """Register the handler of ``kind`` (a decorator). ``on_exhausted`` runs in the transaction that fails the row."""
    limit = max_attempts if callable(max_attempts) else (lambda: max_attempts)

    def register(handler):
        _KINDS[kind] = Kind(kind, handler, limit, backoff_first, backoff_max, on_exhausted)
        return handler

    return register


def registered_kinds() -> list[str]:
    return sorted(_KINDS)


def _kind(name: str) -> Kind:
    kind = _KINDS.get(name)
    if kind is None:
        raise LookupError(f"no outbox handler is registered for {name!r}")
    return kind


def _enqueue(item_id: int, countdown: float | None = None) -> None:
    """Send the dispatch task by its registered name: the tasks module builds on this one, not the reverse."""
    current_app.tasks[DISPATCH_TASK].apply_async(args=[item_id], countdown=countdown)


def outbox_put(
    *,
    kind: str,
    key: str,
    payload: dict[str, Any],
    case: RecoveryCase | int | None = None,
    run_id: str = "",
    delay: float = 0.0,
) -> OutboxItem:
    """Owe one step: write its row in the current transaction and dispatch it once that commits.

    ``key`` names the step (``run.resume:<run>:<case>:g2:a0``): putting the same key again returns the existing row
    and dispatches nothing new, so a repeated transition owes its step once. With ``delay`` (seconds) no attempt is
    made before then (``not_before``): the dispatch is sent with that countdown, an earlier one finds the row busy,
    and the sweep covers a lost message after ``due_at`` -- so a delayed step needs a broker and beat (the embedded
    default, without either, runs it only once a worker with beat does).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox_put must run inside the transaction that owes the step")
    _kind(kind)  # fail loudly on a kind nobody handles, before anything is owed
    item = _new_item(kind=kind, key=_stored_key(key), payload=payload, case=case, run_id=run_id)
    if delay > 0:
        item.not_before = timezone.now() + timedelta(seconds=delay)
        item.due_at += timedelta(seconds=delay)
    # One statement: no read first, no savepoint.
    if not insert_unless_conflict(item, conflict_target=["key"]):  # owed already (a concurrent transaction's too)
        return OutboxItem.objects.get(key=item.key)
    _dispatch_after_commit([item.pk], delay if delay > 0 else None)
    return item


def outbox_put_many(
    *, kind: str, steps: list[tuple[str, dict[str, Any], str]], case: RecoveryCase | int | None = None
) -> None:
    """Owe several steps of one kind at once, ``(key, payload, run_id)`` each, with ``outbox_put``'s rules, in a
    fixed number of statements whatever their number (releasing every run of a case): the keys already owed, one
    INSERT of the others, their ids; one callback dispatches them all once the transaction commits. A step a
    concurrent transaction owed first may be dispatched by both: a dispatch only claims a pending row, so it runs once.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("outbox_put must run inside the transaction that owes the step")
    _kind(kind)
    steps = [(_stored_key(key), payload, run_id) for key, payload, run_id in steps]
    owed = (
        set(OutboxItem.objects.filter(key__in=[key for key, _, _ in steps]).values_list("key", flat=True))
        if steps
        else set()
    )
    fresh = [
        _new_item(kind=kind, key=key, payload=payload, case=case, run_id=run_id)
        for key, payload, run_id in steps
        if key not in owed
    ]
    if not fresh:
        return
    OutboxItem.objects.bulk_create(fresh, ignore_conflicts=True)
    ids = list(
        OutboxItem.objects.filter(key__in=[item.key for item in fresh]).order_by("pk").values_list("pk", flat=True)
    )
    _dispatch_after_commit(ids)


def _dispatch_after_commit(item_ids: list[int], countdown: float | None = None) -> None:
    """Send the rows' dispatch once the current transaction commits. A send that fails (Redis down or restarting)
    is logged and left to the sweep: the rows are committed, so nothing is lost, and the caller's commit -- an
    owner's reconnect, a worker's report -- is not turned into an error after the fact."""

    def send_dispatches() -> None:
        for item_id in item_ids:
            try:
                _enqueue(item_id, countdown)
            except Exception as exc:
                log.warning(
                    "outbox item %s: dispatch not sent (%s: %s); the sweep sends it", item_id, type(exc).__name__, exc
                )

    transaction.on_commit(send_dispatches)


_key_length = OutboxItem._meta.get_field("key").max_length
assert _key_length is not None  # a CharField: its length is declared
KEY_LENGTH: int = _key_length


def _stored_key(key: str) -> str:
    """The key as stored: a key longer than the column (a long qualified run id) keeps its head for reading and ends
    in a digest of the whole, so two steps differing only at their end stay two steps."""
    if len(key) <= KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: KEY_LENGTH - len(digest) - 1]}#{digest}"


def _new_item(
    *, kind: str, key: str, payload: dict[str, Any], case: RecoveryCase | int | None, run_id: str
) -> OutboxItem:
    return OutboxItem(
        kind=kind,
        key=key,
        payload=payload,
        case_id=case.pk if isinstance(case, RecoveryCase) else case,
        run_id=run_id,
        max_attempts=_kind(kind).max_attempts(),
        due_at=timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS),
    )


def _backoff(kind: Kind, attempt: int) -> float:
    delay = min(kind.backoff_max, kind.backoff_first * (2 ** max(attempt - 1, 0)))
    return round(delay * random.uniform(0.8, 1.0), 3)


def _claim(item_id: int, delivery: str = "") -> OutboxItem | None:
    """Take one attempt at a pending row whose previous claim (if any) has expired -- or is held by this very
    message (``delivery``, the Celery task id): the broker hands a message out again only after the worker that had
    it was lost (late acknowledgement, reject on worker lost), so that claim's holder is dead, not slow."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.REVIVE_OUTBOX_CLAIM_SECONDS)
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    if delivery:
        free |= Q(claimed_by=delivery)
    due = Q(not_before__isnull=True) | Q(not_before__lte=now)
    taken = (
        OutboxItem.objects.filter(pk=item_id, state=OutboxItem.State.PENDING)
        .filter(free)
        .filter(due)
        .update(claimed_until=until, claimed_by=delivery, attempts=F("attempts") + 1, updated_at=now)
    )
    return OutboxItem.objects.select_related("case").get(pk=item_id) if taken else None


@contextlib.contextmanager
def claim_renewed(renew: Callable[[], int] | None, claim_seconds: float) -> Iterator[None]:
    """Keep a claim alive while its holder works: ``renew`` (one UPDATE pushing the claim's end out) runs every
    third of ``claim_seconds`` on a thread of its own until the block ends. So a claim can be short -- a worker
    killed mid-step frees its claims within ``claim_seconds`` -- and still never expire under a live holder, however
    long the step (a resumed LangGraph run executes inside its delivery). ``None``: nothing to renew (eager mode)."""
    if renew is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        from django.db import connection

        try:
            while not stop.wait(claim_seconds / 3):
                try:
                    renew()
                except Exception as exc:  # a database blip: the next beat tries again, well before the claim ends
                    log.warning("claim renewal failed (%s: %s)", type(exc).__name__, exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name="claim-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=claim_seconds / 3)


@dataclasses.dataclass
class DispatchResult:
    outcome: str
    """``done``, ``retry`` (``countdown`` seconds), ``failed`` (attempts exhausted), ``busy`` (claimed
    elsewhere, or not pending any more) or ``missing``."""
    countdown: float | None = None
    error: str = ""


def outbox_dispatch(item_id: int, delivery: str = "") -> DispatchResult:
    """Run one attempt of a row's step (what ``cases.outbox_dispatch`` does); record how it went."""
    if not OutboxItem.objects.filter(pk=item_id).exists():
        return DispatchResult("missing")
    item = _claim(item_id, delivery)
    if item is None:
        return DispatchResult("busy")
    kind = _kind(item.kind)

    def renew() -> int:
        return OutboxItem.objects.filter(pk=item.pk, state=OutboxItem.State.PENDING, claimed_by=delivery).update(
            claimed_until=timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_CLAIM_SECONDS)
        )

    try:
        with claim_renewed(renew if delivery else None, settings.REVIVE_OUTBOX_CLAIM_SECONDS):
            answer = kind.handler(item)
    except Exception as exc:  # an unforeseen error (database blip, bug): retried, bounded, then visible
        log.exception("outbox %s (%s) failed", item.key, item.kind)
        answer = Retry(error=f"{type(exc).__name__}: {exc}"[:1000])
    now = timezone.now()
    if not isinstance(answer, Retry):
        OutboxItem.objects.filter(pk=item.pk).update(
            state=OutboxItem.State.DONE, done_at=now, claimed_until=None, updated_at=now
        )
        return DispatchResult("done")
    if item.attempts >= item.max_attempts:
        with transaction.atomic():
            locked = OutboxItem.objects.select_for_update().get(pk=item.pk)
            if locked.state != OutboxItem.State.PENDING:
                return DispatchResult("busy")
            locked.state, locked.last_error, locked.claimed_until = OutboxItem.State.FAILED, answer.error, None
            locked.save(update_fields=["state", "last_error", "claimed_until", "updated_at"])
            if kind.on_exhausted is not None:
                kind.on_exhausted(locked)
        log.warning("outbox %s failed after %d attempts: %s", item.key, item.attempts, answer.error)
        return DispatchResult("failed", error=answer.error)
    countdown = answer.countdown if answer.countdown is not None else _backoff(kind, item.attempts)
    OutboxItem.objects.filter(pk=item.pk).update(
        claimed_until=None,
        last_error=answer.error[:1000],
        updated_at=now,
        due_at=now + timedelta(seconds=countdown + settings.REVIVE_OUTBOX_GRACE_SECONDS),
    )
    return DispatchResult("retry", countdown=countdown, error=answer.error)


def outbox_run(item_id: int, *, eager: bool, delivery: str = "") -> str:
    """Dispatch a row, then schedule its next attempt (the task's body).

    With a broker the next attempt is a new message after its countdown (and the sweep if that is lost);
    in eager mode (the embedded default, no broker) attempts run inline, each pause capped at a second.
    """
    while True:
        result = outbox_dispatch(item_id, delivery)
        if result.outcome != "retry":
            return result.outcome
        if not eager:
            _dispatch_after_commit([item_id], result.countdown)
            return result.outcome
        time.sleep(min(result.countdown or 0.0, 1.0))


def outbox_sweep(*, now=None, limit: int = 500) -> list[int]:
    """Dispatch again every pending row past its ``due_at`` whose claim is free (the beat task's body)."""
    now = now or timezone.now()
    ids = list(
        OutboxItem.objects.filter(state=OutboxItem.State.PENDING, due_at__lt=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("due_at")
        .values_list("pk", flat=True)[:limit]
    )
    for pk in ids:
        _enqueue(pk)
    return ids


def outbox_retry(*, item_id: int, actor: str) -> OutboxItem:
    """An operator gives a failed row its attempts again (admin action); a pending or done row is unchanged."""
    with transaction.atomic():
        item = OutboxItem.objects.select_for_update().get(pk=item_id)
        if item.state != OutboxItem.State.FAILED:
            return item
        item.state, item.attempts, item.claimed_until = OutboxItem.State.PENDING, 0, None
        item.due_at = timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_GRACE_SECONDS)
        item.save(update_fields=["state", "attempts", "claimed_until", "due_at", "updated_at"])
        audit_record(
            actor=actor,
            action="outbox.retried",
            entity_type="outbox_item",
            entity_id=item.key,
            case=item.case,
            run_id=item.run_id,
            before={"state": OutboxItem.State.FAILED},
            after={"state": OutboxItem.State.PENDING},
            arguments={"last_error": item.last_error[:500]},
        )
        _dispatch_after_commit([item.pk])
    return item
