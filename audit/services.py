from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.db import transaction

from .context import work_context
from .models import AuditEvent
from .redaction import redact


def audit_record(
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    outcome: str = "ok",
    case=None,
    run_id: str = "",
    connection_id: str = "",
) -> AuditEvent:
    """Append one audit event, redacted. Call inside the transaction of the change it records.

    Inside ``audit_batch`` the event is written with the batch's others, in one INSERT at the batch's end (its ``pk``
    is set then; ``audit_flush`` writes them at once when a caller needs it before).
    """
    _require_transaction()
    event = AuditEvent(
        **_event_fields(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            before=before,
            after=after,
            arguments=arguments,
            outcome=outcome,
            case=case,
            run_id=run_id,
            connection_id=connection_id,
        )
    )
    if _batching():
        _batch.events.append(event)  # type: ignore[union-attr]
    else:
        event.save(force_insert=True)
    return event


def audit_record_many(events: list[dict[str, Any]]) -> None:
    """Append several audit events (each with ``audit_record``'s arguments) in one INSERT: a change made to a set of
    rows at once (releasing every run of a case) records one event per row without one round trip per row."""
    _require_transaction()
    rows = [AuditEvent(**_event_fields(**event)) for event in events]
    if _batching():
        _batch.events.extend(rows)  # type: ignore[union-attr]
    elif rows:
        AuditEvent.objects.bulk_create(rows)


class _Batch(threading.local):
    events: list[AuditEvent] | None = None
    depth = 0  # the savepoints open when the batch began


_batch = _Batch()


def _batching() -> bool:
    """Whether an event recorded now joins the batch. Not inside a savepoint opened after the batch began: that
    savepoint may be rolled back and its events with it, so they are written at once, inside it."""
    if _batch.events is None:
        return False
    return not any(sid is not None for sid in transaction.get_connection().savepoint_ids[_batch.depth :])


@contextlib.contextmanager
def audit_batch() -> Iterator[None]:
    """Write the audit events recorded inside the block in one INSERT when it ends, in the order they were recorded.

    Open it inside the transaction whose changes it records: the events then commit with them, or are dropped with
    them when the block raises. Nested, it joins the outer batch. An event recorded inside a savepoint opened within
    the block is written at once (it goes if the savepoint is rolled back). Code inside the block that reads
    ``AuditEvent`` rows, or needs an event's ``pk``, calls ``audit_flush`` first.
    """
    if _batch.events is not None:
        yield
        return
    _require_transaction()
    _batch.events, _batch.depth = [], len(transaction.get_connection().savepoint_ids)
    try:
        yield
        audit_flush()
    finally:
        _batch.events = None


def audit_flush() -> None:
    """Write the events the current ``audit_batch`` holds (nothing outside a batch)."""
    events = _batch.events
    if events:
        AuditEvent.objects.bulk_create(events)
        events.clear()


def audit_batched(fn: F) -> F:
    """``audit_batch`` around a service that runs in a transaction (put it below ``@transaction.atomic``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with audit_batch():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _require_transaction() -> None:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")


def _event_fields(
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    outcome: str = "ok",
    case=None,
    run_id: str = "",
    connection_id: str = "",
) -> dict[str, Any]:
    return dict(
        actor=actor[:200],
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id)[:200],
        case_id=getattr(case, "pk", None),
        case_reference=getattr(case, "reference", "") or "",
        run_id=run_id,
        connection_id=connection_id,
        before=redact(before) if before is not None else None,
        after=redact(after) if after is not None else None,
        arguments=redact(arguments or {}),
        outcome=outcome,
        trace_id=work_context()["trace_id"],
    )


F = TypeVar("F", bound=Callable[..., Any])
REFUSAL_ATTRIBUTE = "audit_refusal"


def refusal_attach(exc: BaseException, **event: Any) -> BaseException:
    """Mark an exception as a refused write whose audit event (``audit_record``'s arguments) must be kept.

    The write's own transaction is rolled back by the exception, so ``refusals_kept`` records the event after it.
    """
    setattr(exc, REFUSAL_ATTRIBUTE, {"outcome": "refused", **event})
    return exc


def refusals_kept(fn: F) -> F:
    """Wrap an atomic service (put it above ``@transaction.atomic``): a refusal it raises keeps exactly one audit row.

    The row is written after the service's transaction (or savepoint) has rolled back, in a transaction of its
    own, so it survives the request that was refused.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            event = getattr(exc, REFUSAL_ATTRIBUTE, None)
            if event is not None:
                setattr(exc, REFUSAL_ATTRIBUTE, None)  # an outer service re-raising it does not write it twice
                with transaction.atomic():
                    audit_record(**event)
            raise

    return wrapper  # type: ignore[return-value]
