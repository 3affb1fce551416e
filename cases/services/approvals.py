"""What the resume approval policy (``cases.approval``) and the four-eyes rule are fed for a case: reads only."""

from __future__ import annotations

from django.conf import settings

from audit.models import AuditEvent

from ..approval import RECONCILED_ACTIONS, ApprovalDecision, ApprovalPolicy, Reconciliation, resume_approval_required
from ..models import CaseRun, RecoveryCase


def case_resume_approval(case: RecoveryCase) -> ApprovalDecision:
    """The policy's answer for ``case``, from the reconciliations the audit log recorded for its runs since it opened.

    Reconciliations from before the case opened belong to an earlier incident and do not count.
    """
    policy = getattr(settings, "REVIVE_RESUME_APPROVAL", ApprovalPolicy.AMBIGUOUS)
    if policy != ApprovalPolicy.AMBIGUOUS:
        return resume_approval_required(policy=policy, reconciliations=())
    events = (
        AuditEvent.objects.filter(
            run_id__in=CaseRun.objects.filter(case=case).values("run_id"),
            entity_type="action",
            action__in=RECONCILED_ACTIONS,
            occurred_at__gte=case.opened_at,
        )
        .order_by("occurred_at", "id")
        .values_list("entity_id", "actor", "arguments")
    )
    return resume_approval_required(
        policy=policy,
        reconciliations=[
            Reconciliation(action=entity, actor=actor, evidence=(arguments or {}).get("evidence"))
            for entity, actor, arguments in events
        ],
    )


def case_four_eyes(case: RecoveryCase) -> dict[str, str]:
    """The operators who may not approve ``case``'s resume under ``REVIVE_FOUR_EYES``, each with why: whoever
    reconciled one of its runs' actions by hand, and whoever resent the owner link that was used."""
    barred: dict[str, str] = {}
    for actor in (
        AuditEvent.objects.filter(
            run_id__in=CaseRun.objects.filter(case=case).values("run_id"),
            entity_type="action",
            action__in=RECONCILED_ACTIONS,
            occurred_at__gte=case.opened_at,
            actor__startswith="operator:",
        )
        .order_by()
        .values_list("actor", flat=True)
        .distinct()
    ):
        barred[actor] = "reconciled an action by hand"
    # Through the reverse relation reauth's requests declare: cases does not import reauth.
    for actor in case.reconnect_requests.filter(state="consumed", created_by__startswith="operator:").values_list(
        "created_by", flat=True
    ):
        barred.setdefault(actor, "resent the owner link that was used")
    return barred
