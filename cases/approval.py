"""The resume approval policy: when a case about to resume waits for an operator. Pure: no models, no settings.

``cases.services.case_resume_approval`` feeds it the reconciliations the actions of a case's runs keep
(``Action.reconciliations``) and the configured policy (``REVIVE_RESUME_APPROVAL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class ApprovalPolicy:
    """``settings.REVIVE_RESUME_APPROVAL``: when a resume waits for an operator in ``awaiting_approval``."""

    NEVER = "never"
    AMBIGUOUS = "ambiguous"
    ALWAYS = "always"
    CHOICES = (NEVER, AMBIGUOUS, ALWAYS)


RECONCILED_ACTIONS = ("action.reconciled_committed", "action.reconciled_absent")


@dataclass(frozen=True)
class Reconciliation:
    """One settling of an ambiguous action, as the approval policy sees it."""

    action: str
    """``run_id/action_key``."""
    actor: str
    evidence: Any


@dataclass(frozen=True)
class ApprovalDecision:
    policy: str
    required: bool
    reasons: tuple[str, ...] = ()


def reconciled_by_hand(actor: str) -> bool:
    """An operator (console user or operator API key) decided, not a reconciler or a worker's lookup."""
    return actor.startswith("operator:")


def evidence_missing(evidence: Any) -> bool:
    """Nothing was recorded but who decided: no lookup result, reference or note."""
    if not isinstance(evidence, dict):
        return True
    return all(value in (None, "", [], {}) for key, value in evidence.items() if key != "reconciler")


def resume_approval_required(*, policy: str, reconciliations: Iterable[Reconciliation]) -> ApprovalDecision:
    """Whether a case about to resume must wait for an operator's approval, and why. Pure: no database.

    ``never``: no case waits. ``always``: every case waits. ``ambiguous``: a case waits when any action of its
    runs was settled during the case by hand (an operator actor) or without evidence.
    """
    if policy not in ApprovalPolicy.CHOICES:
        raise ValueError(
            f"unknown resume approval policy {policy!r}; expected one of {', '.join(ApprovalPolicy.CHOICES)}"
        )
    if policy == ApprovalPolicy.NEVER:
        return ApprovalDecision(policy=policy, required=False)
    if policy == ApprovalPolicy.ALWAYS:
        return ApprovalDecision(policy=policy, required=True, reasons=("every resume is approved (policy 'always')",))
    reasons = []
    for rec in reconciliations:
        if reconciled_by_hand(rec.actor):
            reasons.append(f"{rec.action} was reconciled by hand ({rec.actor})")
        elif evidence_missing(rec.evidence):
            reasons.append(f"{rec.action} was reconciled without evidence ({rec.actor})")
    return ApprovalDecision(policy=policy, required=bool(reasons), reasons=tuple(reasons))
