"""The transactional outbox: every step Revive owes is a row before it is a message.

A service that owes a side effect (the owner's notification, a reconciliation, a resume delivery) calls
``outbox_put`` inside the transaction that changes the state owing it, so the step exists exactly when the
change commits. Right after the commit ``cases.outbox_dispatch`` is enqueued for it (low latency) -- one message
per batch of ``REVIVE_OUTBOX_BATCH_SIZE`` rows owed together (every run of a released case), and a worker's dispatch
carries the first batch its own steps owe (``outbox_run``); if Redis loses that message or a worker dies running it,
``outbox_sweep`` (beat task ``cases.outbox_sweep``) dispatches every row still pending after its ``due_at``. Losing a
message therefore delays a step; it never loses it.

Each kind has one handler, registered with ``outbox_handler`` by the module that owns the step (``cases.pipeline``
for reconcile and resume, ``reauth.handlers`` for the owner's notification); this module imports neither, so any
app may owe a step without importing the app that performs it. A handler returns ``Done``/``None`` or ``Retry``
(or raises: an unexpected error is retried like a transient one). Every dispatch is one attempt: rows are claimed
by a conditional UPDATE (a batch's in one), so two dispatches of one row never run its handler at the same time; after
``max_attempts`` the row is ``failed`` with its last error and its kind's ``on_exhausted`` hook puts the failure
where an operator sees it (the admin's outbox list always shows it).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
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


def _enqueue(item_ids: list[int], countdown: float | None = None) -> None:
    """Send one dispatch message for ``item_ids`` (one batch), by the task's registered name: the tasks module builds
    on this one, not the reverse."""
    current_app.tasks[DISPATCH_TASK].apply_async(args=[item_ids], countdown=countdown)


def _batches(item_ids: list[int]) -> Iterator[list[int]]:
    size = max(1, int(settings.REVIVE_OUTBOX_BATCH_SIZE))
    for start in range(0, len(item_ids), size):
        yield item_ids[start : start + size]


_carried: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("outbox_carried", default=None)
"""Inside a worker's ``outbox_run``: where the first batch of rows its steps owe is kept, to be dispatched by the same
task right after (see ``outbox_run``) instead of going through Redis and another worker process."""


def _send(item_ids: list[int], countdown: float | None = None) -> None:
    """Send the rows' dispatch messages, ``REVIVE_OUTBOX_BATCH_SIZE`` rows a message. A send that fails (Redis down or
    restarting) is logged and left to the sweep: the rows are committed, so nothing is lost. Inside a worker's
    ``outbox_run`` the first batch owed without a delay is carried by that task instead of sent."""
    carried = _carried.get()
    if carried is not None and not carried and countdown is None:
        carried.extend(next(_batches(item_ids), []))
        item_ids = item_ids[len(carried) :]
    for batch in _batches(item_ids):
        try:
            _enqueue(batch, countdown)
        except Exception as exc:
            log.warning(
                "outbox item %s: dispatch not sent (%s: %s); the sweep sends it",
                ", ".join(map(str, batch)),
                type(exc).__name__,
                exc,
            )


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
    """Send the rows' dispatch once the current transaction commits, in batches (``_send``). A send that fails is left
    to the sweep, and the caller's commit -- an owner's reconnect, a worker's report -- is not turned into an error
    after the fact."""
    transaction.on_commit(lambda: _send(item_ids, countdown))


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


def _claim(item_ids: list[int], delivery: str = "") -> list[OutboxItem]:
    """Take one attempt at each pending row whose previous claim (if any) has expired -- or is held by this very
    message (``delivery``, the Celery task id): the broker hands a message out again only after the worker that had
    it was lost (late acknowledgement, reject on worker lost), so that claim's holder is dead, not slow. One UPDATE
    claims them all and one SELECT reads back the rows this claim took (by its holder and end), in the order asked."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.REVIVE_OUTBOX_CLAIM_SECONDS)
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    if delivery:
        free |= Q(claimed_by=delivery)
    due = Q(not_before__isnull=True) | Q(not_before__lte=now)
    taken = (
        OutboxItem.objects.filter(pk__in=item_ids, state=OutboxItem.State.PENDING)
        .filter(free)
        .filter(due)
        .update(claimed_until=until, claimed_by=delivery, attempts=F("attempts") + 1, updated_at=now)
    )
    if not taken:
        return []
    mine = OutboxItem.objects.select_related("case").filter(
        pk__in=item_ids, state=OutboxItem.State.PENDING, claimed_by=delivery, claimed_until=until
    )
    by_pk = {item.pk: item for item in mine}
    return [by_pk[pk] for pk in item_ids if pk in by_pk]


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
    elsewhere, or not pending any more), ``missing``, or ``deferred`` (a batch ran out of time before this row:
    its claim is given back without spending an attempt, and the row is sent again)."""
    countdown: float | None = None
    error: str = ""


def outbox_dispatch(item_id: int, delivery: str = "") -> DispatchResult:
    """Run one attempt of a row's step; record how it went (``outbox_dispatch_many`` of one row)."""
    return outbox_dispatch_many([item_id], delivery)[item_id]


DONE_FLUSH_SECONDS = 1.0
"""How long a batch holds the rows it finished before marking them ``done`` in one UPDATE. Until then they stay
claimed by the batch; if its worker dies, the redelivered message finds their steps done (handlers are idempotent)."""


def outbox_dispatch_many(
    item_ids: list[int], delivery: str = "", *, budget: float | None = None
) -> dict[int, DispatchResult]:
    """One attempt at each row's step (what ``cases.outbox_dispatch`` does with a batch of rows): claim them all in
    one statement, run each row's handler in turn -- one database connection, this process's -- and record the
    outcomes, the rows done together in one UPDATE (every ``DONE_FLUSH_SECONDS`` and at the end). The claims are
    renewed together while the batch runs. With ``budget`` (seconds) the rows not started by then are ``deferred``:
    their claims go back, their attempts uncounted, for the caller to send again (a batch stays well inside the
    task's time limit however slow its steps)."""
    ids = list(dict.fromkeys(item_ids))
    items = _claim(ids, delivery)
    results: dict[int, DispatchResult] = {}
    if len(items) < len(ids):
        taken = {item.pk for item in items}
        rest = [pk for pk in ids if pk not in taken]
        existing = set(OutboxItem.objects.filter(pk__in=rest).values_list("pk", flat=True))
        results.update({pk: DispatchResult("busy" if pk in existing else "missing") for pk in rest})
    if not items:
        return results
    held = {"ids": tuple(item.pk for item in items)}  # replaced, never mutated: the renewal thread reads it

    def renew() -> int:
        return OutboxItem.objects.filter(
            pk__in=held["ids"], state=OutboxItem.State.PENDING, claimed_by=delivery
        ).update(claimed_until=timezone.now() + timedelta(seconds=settings.REVIVE_OUTBOX_CLAIM_SECONDS))

    done: list[int] = []
    flushed = started = time.monotonic()

    def flush() -> None:
        nonlocal flushed
        if done:
            now = timezone.now()
            OutboxItem.objects.filter(pk__in=done).update(
                state=OutboxItem.State.DONE, done_at=now, claimed_until=None, updated_at=now
            )
            done.clear()
        flushed = time.monotonic()

    with claim_renewed(renew if delivery else None, settings.REVIVE_OUTBOX_CLAIM_SECONDS):
        for n, item in enumerate(items):
            if budget is not None and n and time.monotonic() - started > budget:
                deferred = [later.pk for later in items[n:]]
                held["ids"] = tuple(pk for pk in held["ids"] if pk not in set(deferred))
                OutboxItem.objects.filter(
                    pk__in=deferred, state=OutboxItem.State.PENDING, claimed_by=delivery, attempts__gt=0
                ).update(claimed_until=None, attempts=F("attempts") - 1, updated_at=timezone.now())
                results.update({pk: DispatchResult("deferred") for pk in deferred})
                break
            answer = _attempt(item)
            if isinstance(answer, Retry):
                results[item.pk] = _not_done(item, answer)
                held["ids"] = tuple(pk for pk in held["ids"] if pk != item.pk)
            else:
                done.append(item.pk)
                results[item.pk] = DispatchResult("done")
                if time.monotonic() - flushed >= DONE_FLUSH_SECONDS:
                    flush()
        flush()
    return results


def _attempt(item: OutboxItem) -> Done | Retry | None:
    try:
        return _kind(item.kind).handler(item)
    except Exception as exc:  # an unforeseen error (database blip, bug): retried, bounded, then visible
        log.exception("outbox %s (%s) failed", item.key, item.kind)
        return Retry(error=f"{type(exc).__name__}: {exc}"[:1000])


def _not_done(item: OutboxItem, answer: Retry) -> DispatchResult:
    """Record an attempt that must be retried: its next due time, or ``failed`` once its attempts are spent."""
    now = timezone.now()
    kind = _kind(item.kind)
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


def outbox_run(item_ids: list[int], *, eager: bool, delivery: str = "") -> dict[str, int]:
    """Dispatch a batch of rows, then schedule what comes next (the task's body); returns the count per outcome.

    With a broker each row to retry is a new message after its countdown (and the sweep if that is lost), and the
    rows a batch had no time for (``REVIVE_OUTBOX_BATCH_SECONDS``) go out again as a new batch at once; in eager mode
    (the embedded default, no broker) everything runs inline, each pause before a retry capped at a second.

    The steps a batch owes in turn (a reconciliation releasing a case owes its runs' deliveries) go out as new
    messages, except the first batch of them, which this task dispatches itself right after, within the same time
    budget: the owner's reconnect reaches the first runs without a second trip through Redis and the worker's pool.
    If this worker dies first, those rows wait for the sweep (their claim by this message runs out, or they were
    never claimed): a delay, nothing lost.
    """
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    while item_ids:
        carried: list[int] = []
        token = _carried.set(None if eager else carried)
        try:
            budget = None if eager else settings.REVIVE_OUTBOX_BATCH_SECONDS - (time.monotonic() - started)
            results = outbox_dispatch_many(item_ids, delivery, budget=budget)
        finally:
            _carried.reset(token)
        if eager:
            for pk, result in list(results.items()):
                while result.outcome == "retry":
                    time.sleep(min(result.countdown or 0.0, 1.0))
                    result = results[pk] = outbox_dispatch(pk, delivery)
        else:
            _send([pk for pk, result in results.items() if result.outcome == "deferred"])
            for pk, result in results.items():
                if result.outcome == "retry":
                    _send([pk], result.countdown)
        counts.update(result.outcome for result in results.values())
        item_ids = carried
        if item_ids and time.monotonic() - started >= settings.REVIVE_OUTBOX_BATCH_SECONDS:
            _send(item_ids)  # no time left for them here
            break
    return dict(counts)


def outbox_sweep(*, now=None, limit: int = 5000) -> list[int]:
    """Dispatch again every pending row past its ``due_at`` whose claim is free (the beat task's body), in batches."""
    now = now or timezone.now()
    ids = list(
        OutboxItem.objects.filter(state=OutboxItem.State.PENDING, due_at__lt=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("due_at")
        .values_list("pk", flat=True)[:limit]
    )
    _send(ids)
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
