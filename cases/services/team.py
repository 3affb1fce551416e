"""Team tools: who holds a case, and its notes."""

from __future__ import annotations

from django.db import transaction

from audit.redaction import redact
from audit.services import audit_record

from ..models import CaseNote, RecoveryCase
from .common import case_lock
from .decisions import _required_text


@transaction.atomic
def case_assign(*, case_id: str | int, assignee, actor: str) -> RecoveryCase:
    """Give ``case`` to an operator (``assignee``, a user holding ``cases.operate_case``) or to nobody (``None``).
    Audited as ``case.assigned`` with who had it before; assigning to the current assignee changes nothing."""
    from revive_site.errors import ValidationFailed

    case = case_lock(case_id)
    if assignee is not None and not assignee.has_perm("cases.operate_case"):
        raise ValidationFailed(
            f"{assignee.get_username()} is not an operator; only operators take cases.", data={"field": "assignee"}
        )
    if case.assignee_id == getattr(assignee, "pk", None):
        return case
    before = case.assignee.get_username() if case.assignee is not None else None
    case.assignee = assignee
    case.save(update_fields=["assignee"])
    after = assignee.get_username() if assignee is not None else None
    audit_record(
        actor=actor,
        action="case.assigned",
        entity_type="case",
        entity_id=case.reference or "",
        case=case,
        run_id=case.run_id or "",
        connection_id=case.connection_id,
        before={"assignee": before},
        after={"assignee": after},
    )
    return case


@transaction.atomic
def case_note_add(*, case_id: str | int, body: str, actor: str) -> CaseNote:
    """Append a note to the case's thread; the note is an audit event too (``case.noted``, redacted)."""
    body = _required_text(body, name="note")
    case = case_lock(case_id)
    note = CaseNote.objects.create(case=case, author=actor[:200], body=redact(body))
    audit_record(
        actor=actor,
        action="case.noted",
        entity_type="case",
        entity_id=case.reference or "",
        case=case,
        run_id=case.run_id or "",
        connection_id=case.connection_id,
        arguments={"note": body, "note_id": note.pk},
    )
    return note
