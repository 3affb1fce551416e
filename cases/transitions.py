"""The two state machines of the recovery contract, declared once, next to their models.

Each table maps a state to the states a service may move it to. ``cases.services.case_transition`` refuses a case
move the table does not allow, and the action ledger's writes refuse an action move the same way
(``cases.services.ledger._require_action_move``). A service that decides *which* allowed move to make (approve
only from ``awaiting_approval``, reopen only from ``abandoned``...) says so itself; whether a move is allowed at
all is read from here.
"""

from __future__ import annotations

from .models import Action, CaseState

ACTION_TRANSITIONS: dict[str | None, set[str]] = {
    None: {Action.State.BEGUN, Action.State.EXECUTING},
    Action.State.BEGUN: {Action.State.EXECUTING},
    Action.State.EXECUTING: {Action.State.COMMITTED, Action.State.FAILED, Action.State.AMBIGUOUS},
    Action.State.AMBIGUOUS: {Action.State.RECONCILED_COMMITTED, Action.State.RECONCILED_ABSENT},
    Action.State.RECONCILED_ABSENT: {Action.State.EXECUTING},
    Action.State.FAILED: {Action.State.EXECUTING},
    Action.State.COMMITTED: set(),
    Action.State.RECONCILED_COMMITTED: set(),
}

CASE_TRANSITIONS: dict[str, set[str]] = {
    # ``closed`` straight from a waiting state: the credential system recovered the grant itself (see
    # ``case_recover_without_reconnect``) before anyone reconnected and before any run was blocked.
    CaseState.OPENED: {CaseState.AWAITING_OWNER, CaseState.REAUTHORIZED, CaseState.ABANDONED, CaseState.CLOSED},
    CaseState.AWAITING_OWNER: {CaseState.REAUTHORIZED, CaseState.ABANDONED, CaseState.CLOSED},
    CaseState.REAUTHORIZED: {
        CaseState.RECONCILING,
        CaseState.AWAITING_APPROVAL,
        CaseState.RESUMING,
        CaseState.ABANDONED,
    },
    CaseState.RECONCILING: {CaseState.AWAITING_APPROVAL, CaseState.RESUMING, CaseState.ABANDONED},
    CaseState.AWAITING_APPROVAL: {CaseState.RESUMING, CaseState.ABANDONED},
    # ``awaiting_approval`` from ``resuming``: a reconciliation landed by hand or without evidence (``_hold_for_approval``).
    CaseState.RESUMING: {CaseState.RESUMED, CaseState.RESUME_FAILED, CaseState.AWAITING_APPROVAL},
    CaseState.RESUME_FAILED: {CaseState.RESUMING, CaseState.ABANDONED},
    # ``resume_failed`` from ``resumed``: a run Revive executes itself stopped after it went past its parked action
    # and could not be continued (``case_resume_fail`` with ``stopped_run``).
    CaseState.RESUMED: {CaseState.CLOSED, CaseState.RESUME_FAILED},
    CaseState.CLOSED: set(),
    CaseState.ABANDONED: {CaseState.AWAITING_OWNER, CaseState.AWAITING_APPROVAL},  # case_reopen only
}
