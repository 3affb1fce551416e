"""What the resume approval policy (``cases.approval``) and the four-eyes rule are fed for a case: reads only.

Both read the settlings each action of the case's runs keeps (``Action.reconciliations``, appended by
``action_reconcile``), never the audit log.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from ..approval import ApprovalDecision, ApprovalPolicy, Reconciliation, reconciled_by_hand, resume_approval_required
from ..models import Action, CaseRun, RecoveryCase


def case_reconciliations(case: RecoveryCase) -> list[Reconciliation]:
    """Every settling of an action of ``case``'s runs since the case opened, oldest first.

    Settlings from before the case opened belong to an earlier incident and do not count.
    """
    settled = []
    for pk, run_id, action_key, entries in (
        Action.objects.filter(run_id__in=CaseRun.objects.filter(case=case).values("run_id"))
        .exclude(reconciliations=[])
        .order_by()
        .values_list("pk", "run_id", "action_key", "reconciliations")
    ):
        for position, entry in enumerate(entries):
            at = datetime.fromisoformat(entry["at"])
            if at >= case.opened_at:
                settled.append(
                    (
                        (at, pk, position),
                        Reconciliation(
                            action=f"{run_id}/{action_key}", actor=entry["actor"], evidence=entry.get("evidence")
                        ),
                    )
                )
    return [rec for _, rec in sorted(settled, key=lambda item: item[0])]


def case_resume_approval(case: RecoveryCase) -> ApprovalDecision:
    """The policy's answer for ``case``, from the settlings of its runs' actions since it opened."""
    policy = getattr(settings, "REVIVE_RESUME_APPROVAL", ApprovalPolicy.AMBIGUOUS)
    if policy != ApprovalPolicy.AMBIGUOUS:
        return resume_approval_required(policy=policy, reconciliations=())
    return resume_approval_required(policy=policy, reconciliations=case_reconciliations(case))


def case_four_eyes(case: RecoveryCase) -> dict[str, str]:
    """The operators who may not approve ``case``'s resume under ``REVIVE_FOUR_EYES``, each with why: whoever
    reconciled one of its runs' actions by hand, and whoever resent the owner link that was used."""
    barred: dict[str, str] = {}
    for rec in case_reconciliations(case):
        if reconciled_by_hand(rec.actor):
            barred.setdefault(rec.actor, "reconciled an action by hand")
    # Through the reverse relation reauth's requests declare: cases does not import reauth.
    for actor in case.reconnect_requests.filter(state="consumed", created_by__startswith="operator:").values_list(
        "created_by", flat=True
    ):
        barred.setdefault(actor, "resent the owner link that was used")
    return barred
