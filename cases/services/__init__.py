"""Every write of the recovery contract.

Each public function here is one transaction. Locks are always taken in the
same order -- connection, then run, then action, then case run, then case --
so concurrent callers queue instead of deadlocking. A connection row is locked ``FOR SHARE``
by writers that only need its generation to stay put (``action_begin``,
``action_commit``) and exclusively by writers that change what a generation
means -- ``FOR UPDATE`` to reject it, the ``UPDATE`` of ``current_generation`` itself
to advance it (``lease_advance``) -- so a begin can never interleave with the
generation moving underneath it.

The services live in modules by subject -- ``api_keys``; ``connections`` and their leases; ``runs`` and their
checkpoints; ``ledger`` and ``actions`` (a worker's protected actions); ``failures`` (a credential failure opening
or joining a case); ``cases`` (a case's lifecycle and the release of its runs); ``owed`` (the pipeline steps a
write owes in its transaction); ``approvals``, ``decisions`` (an operator's) and ``team`` -- over ``common``, the
locks above. The state machines are ``cases.transitions``. Callers use this package (``from cases import
services``), which names the public API below.
"""

from ..approval import (
    RECONCILED_ACTIONS,
    ApprovalDecision,
    ApprovalPolicy,
    Reconciliation,
    evidence_missing,
    reconciled_by_hand,
    resume_approval_required,
)
from ..transitions import ACTION_TRANSITIONS, CASE_TRANSITIONS
from .actions import (
    BeginResult,
    Decision,
    action_begin,
    action_commit,
    action_heartbeat,
    action_mark_ambiguous,
    action_reconcile,
    reap_stale_actions,
)
from .api_keys import api_key_authenticate, api_key_cache, api_key_create, api_key_forget, api_key_revoke
from .approvals import case_four_eyes, case_resume_approval
from .cases import (
    LIVE_TRANSITIONS,
    case_await_owner,
    case_finish_if_resumed,
    case_reauthorize,
    case_resume_begin,
    case_resume_fail,
    case_runs_release,
    case_transition,
)
from .common import SYSTEM, case_lock
from .connections import Lease, connection_broker_check, connection_create, lease_acquire, lease_advance
from .decisions import (
    CaseDecision,
    case_abandon,
    case_approve,
    case_last_decision,
    case_reject,
    case_reopen,
    case_retry_resume,
    raise_moved,
)
from .failures import (
    CASE_CLASS_ORDER,
    OWNER_CLASSES,
    FailureAnswer,
    Outcome,
    action_fail,
    case_class_rank,
    case_open_from_signal,
    case_recover_without_reconnect,
    credential_failure_report,
)
from .ledger import idempotency_key_for, params_hash_for
from .owed import (
    ABANDON_RUN,
    RECONCILE_CASE,
    RESUME_RUN,
    case_reconcile_owe,
    run_continue_owe,
    run_resume_owe,
    run_resume_owe_many,
    runs_abandon_owe,
)
from .runs import AbandonClaim, checkpoint_record, run_abandon_claim, run_park_again, run_register
from .team import case_assign, case_note_add

__all__ = [
    # approval
    "RECONCILED_ACTIONS",
    "ApprovalDecision",
    "ApprovalPolicy",
    "Reconciliation",
    "evidence_missing",
    "reconciled_by_hand",
    "resume_approval_required",
    # transitions
    "ACTION_TRANSITIONS",
    "CASE_TRANSITIONS",
    # common
    "SYSTEM",
    "case_lock",
    # api_keys
    "api_key_authenticate",
    "api_key_cache",
    "api_key_create",
    "api_key_forget",
    "api_key_revoke",
    # connections
    "Lease",
    "connection_broker_check",
    "connection_create",
    "lease_acquire",
    "lease_advance",
    # runs
    "AbandonClaim",
    "checkpoint_record",
    "run_abandon_claim",
    "run_park_again",
    "run_register",
    # ledger
    "idempotency_key_for",
    "params_hash_for",
    # actions
    "BeginResult",
    "Decision",
    "action_begin",
    "action_commit",
    "action_heartbeat",
    "action_mark_ambiguous",
    "action_reconcile",
    "reap_stale_actions",
    # failures
    "CASE_CLASS_ORDER",
    "OWNER_CLASSES",
    "FailureAnswer",
    "Outcome",
    "action_fail",
    "case_class_rank",
    "case_open_from_signal",
    "case_recover_without_reconnect",
    "credential_failure_report",
    # cases
    "LIVE_TRANSITIONS",
    "case_await_owner",
    "case_finish_if_resumed",
    "case_reauthorize",
    "case_resume_begin",
    "case_resume_fail",
    "case_runs_release",
    "case_transition",
    # owed
    "ABANDON_RUN",
    "RECONCILE_CASE",
    "RESUME_RUN",
    "case_reconcile_owe",
    "run_continue_owe",
    "run_resume_owe",
    "run_resume_owe_many",
    "runs_abandon_owe",
    # approvals
    "case_four_eyes",
    "case_resume_approval",
    # decisions
    "CaseDecision",
    "case_abandon",
    "case_approve",
    "case_last_decision",
    "case_reject",
    "case_reopen",
    "case_retry_resume",
    "raise_moved",
    # team
    "case_assign",
    "case_note_add",
]
