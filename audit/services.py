from __future__ import annotations

import functools
from collections.abc import Callable
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
    """Append one audit event, redacted. Call inside the transaction of the change it records."""
    _require_transaction()
    return AuditEvent.objects.create(
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


def audit_record_many(events: list[dict[str, Any]]) -> None:
    """Append several audit events (each with ``audit_record``'s arguments) in one INSERT: a change made to a set of
    rows at once (releasing every run of a case) records one event per row without one round trip per row."""
    _require_transaction()
    if events:
        AuditEvent.objects.bulk_create([AuditEvent(**_event_fields(**event)) for event in events])


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
