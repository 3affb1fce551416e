from __future__ import annotations

from typing import Any

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
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    return AuditEvent.objects.create(
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
