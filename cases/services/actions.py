"""A worker's protected actions: begin, heartbeat, commit, ambiguous, reconcile, and the reaper. Begin and commit
try the one-statement hot path (``cases.hotpath``) first and fall back to the locked path here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import refusal_attach, refusals_kept

from .. import hotpath
from ..approval import ApprovalPolicy, Reconciliation, resume_approval_required
from ..errors import (
    ActionAlreadyReconciled,
    ActionConnectionMismatch,
    ActionInProgress,
    ActionParamsMismatch,
    ActionStateConflict,
    LeaseFenced,
    RunAbandoned,
)
from ..models import Action, CaseRun, CaseState, Checkpoint, CredentialGeneration, RecoveryCase, Run
from .cases import _case_join, case_transition
from .common import (
    _blocking_case,
    _check_generation,
    _get_run,
    _lock_connection,
    _lock_connection_for_begin,
    _open_case_for,
    case_lock,
)
from .ledger import (
    _action_connection_id,
    _action_transition,
    _audit_fenced,
    _fenced_event,
    _lock_deadline,
    _lock_left,
    _locked_action,
    _require_action_move,
    idempotency_key_for,
    params_hash_for,
)
from .runs import _abandoned_by, _checkpoint_get_or_create, _run_relive, _run_went_past, run_park_again


class Decision:
    EXECUTE = "execute"
    REPLAY = "replay"
    RECONCILE = "reconcile"
    FENCED = "fenced"
    PARKED = "parked"


@dataclass
class BeginResult:
    decision: str
    idempotency_key: str
    generation: int
    current_generation: int
    action_state: str | None = None
    attempt: int = 0
    result: Any = None
    external_ref: str = ""
    case_reference: str | None = None
    lock_seconds: int | None = None
    """For ``execute``: how long the attempt's lock lasts without a heartbeat (the SDK beats at a third of it)."""


def action_begin(
    *,
    run_id: str,
    checkpoint_id: str,
    connection_id: str,
    action_key: str,
    generation: int,
    params: Any = None,
    actor: str,
) -> BeginResult:
    """Decide what a worker may do with one action: execute, replay, reconcile, fenced or parked.

    The common case (a fresh action, the current generation, a run nothing holds) is one statement
    (``cases.hotpath``); every other case is decided under row locks by ``_action_begin_locked``.
    """
    if hotpath.available():
        key = idempotency_key_for(run_id=run_id, action_key=action_key)
        if hotpath.begin_execute(
            run_id=run_id,
            checkpoint_id=checkpoint_id,
            connection_id=connection_id,
            action_key=action_key,
            generation=generation,
            idempotency_key=key,
            params_hash=params_hash_for(params),
            actor=actor,
        ):
            return BeginResult(
                decision=Decision.EXECUTE,
                idempotency_key=key,
                generation=generation,
                current_generation=generation,
                action_state=Action.State.EXECUTING,
                attempt=1,
                lock_seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT,
            )
    return _action_begin_locked(
        run_id=run_id,
        checkpoint_id=checkpoint_id,
        connection_id=connection_id,
        action_key=action_key,
        generation=generation,
        params=params,
        actor=actor,
    )


@transaction.atomic
def _action_begin_locked(
    *,
    run_id: str,
    checkpoint_id: str,
    connection_id: str,
    action_key: str,
    generation: int,
    params: Any = None,
    actor: str,
) -> BeginResult:
    """``action_begin`` under row locks: reads the connection with its current generation's state, and the
    checkpoint with its run."""
    conn = _lock_connection_for_begin(connection_id)
    checkpoint = Checkpoint.objects.select_related("run").filter(run_id=run_id, checkpoint_id=checkpoint_id).first()
    run = checkpoint.run if checkpoint is not None else _get_run(run_id)
    key = idempotency_key_for(run_id=run_id, action_key=action_key)
    _check_generation(conn, generation)

    def answer(decision: str, action: Action | None = None, case: RecoveryCase | None = None) -> BeginResult:
        return BeginResult(
            decision=decision,
            idempotency_key=key,
            generation=generation,
            current_generation=conn.current_generation,
            action_state=action.state if action else None,
            attempt=action.attempts if action else 0,
            result=action.result if action and decision == Decision.REPLAY else None,
            external_ref=action.external_ref if action and decision == Decision.REPLAY else "",
            case_reference=case.reference if case else None,
            lock_seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT if decision == Decision.EXECUTE else None,
        )

    if generation < conn.current_generation:
        _audit_fenced(actor=actor, run_id=run_id, conn=conn, what="begin", generation=generation)
        return answer(Decision.FENCED)

    if checkpoint is None:
        checkpoint = _checkpoint_get_or_create(
            run=run, checkpoint_id=checkpoint_id, label="", runtime_ref={}, actor=actor
        )
    phash = params_hash_for(params)

    def settled(action: Action) -> BeginResult | None:
        """The answer for an existing ledger entry that may not simply (re-)execute, or None."""
        if action.connection_id != conn.pk:
            raise ActionConnectionMismatch(data={"action_key": action_key, "connection_id": action.connection_id})
        if action.params_hash != phash:
            raise ActionParamsMismatch(data={"action_key": action_key, "idempotency_key": key})
        if action.state in (Action.State.COMMITTED, Action.State.RECONCILED_COMMITTED):
            _run_went_past(run_id=run.pk, action=action, generation=generation, actor=actor, how="replayed")
            return answer(Decision.REPLAY, action)
        if action.state == Action.State.AMBIGUOUS:
            return answer(Decision.RECONCILE, action)
        if action.state == Action.State.EXECUTING:
            if action.lock_expires_at is not None and action.lock_expires_at < timezone.now():
                # Its worker stopped beating: what the reaper would do next, done now, so the caller reconciles
                # at once instead of waiting for the next sweep.
                _action_transition(
                    action,
                    to=Action.State.AMBIGUOUS,
                    actor="system:reaper",
                    lock_expires_at=None,
                    arguments={"reason": "lock timeout expired", "noticed_by": actor},
                )
                return answer(Decision.RECONCILE, action)
            raise ActionInProgress(data={"action_key": action_key, "idempotency_key": key, **_lock_left(action)})
        return None

    action = Action.objects.select_for_update().filter(run=run, action_key=action_key).first()
    if action is not None and (res := settled(action)) is not None:
        return res

    if run.state == Run.State.ABANDONED:
        raise RunAbandoned(data={"run_id": run_id, "action_key": action_key, "case_id": _abandoned_by(run_id)})
    blocking = _blocking_case(run) if run.state == Run.State.PARKED else None
    if blocking is None and run.state == Run.State.PARKED:
        _run_relive(run=run, actor=actor)
    # ``current_generation_state`` is read with the connection by ``_lock_connection_for_begin``'s raw query.
    if blocking is None and conn.current_generation_state == CredentialGeneration.State.REJECTED:  # type: ignore[attr-defined]
        blocking = _open_case_for(conn, generation)
    to = Action.State.BEGUN if blocking is not None else Action.State.EXECUTING
    changes: dict[str, Any] = (
        {}
        if blocking is not None
        else dict(
            generation=generation,
            attempts=(action.attempts if action else 0) + 1,
            checkpoint=checkpoint,
            error=None,
            lock_expires_at=_lock_deadline(),
        )
    )
    if action is None:
        fresh = Action(
            run=run,
            action_key=action_key,
            idempotency_key=key,
            connection=conn,
            checkpoint=checkpoint,
            params_hash=phash,
            state=None,
            generation=generation,
        )  # type: ignore[misc]  # no state until moved
        try:
            with transaction.atomic():
                _action_transition(fresh, to=to, actor=actor, **changes)
            action = fresh
        except IntegrityError:
            # A concurrent begin created it first and has committed: wait for its row lock and answer from it.
            action = Action.objects.select_for_update().get(run=run, action_key=action_key)
            if (res := settled(action)) is not None:
                return res
            if blocking is None:  # it was only begun while parked: claim it below
                changes["attempts"] = action.attempts + 1
        else:
            if blocking is not None:
                if not CaseRun.objects.filter(case=blocking, run=run).exists():
                    _case_join(case=blocking, run=run, checkpoint=checkpoint, action=action, actor=actor)
                return answer(Decision.PARKED, action, blocking)
            return answer(Decision.EXECUTE, action)

    if blocking is not None:
        if not CaseRun.objects.filter(case=blocking, run=run).exists():
            _case_join(case=blocking, run=run, checkpoint=checkpoint, action=action, actor=actor)
        return answer(Decision.PARKED, action, blocking)
    _action_transition(action, to=Action.State.EXECUTING, actor=actor, **changes)
    return answer(Decision.EXECUTE, action)


@transaction.atomic
def action_heartbeat(*, run_id: str, action_key: str, generation: int, actor: str) -> Action:
    """The worker executing an action is alive: extend its lock by ``REVIVE_ACTION_LOCK_TIMEOUT`` from now.

    Only the current generation's executing attempt may extend it; any other state is a conflict (the reaper or
    a reconciliation settled it meanwhile), so a worker that lost its action learns it at its next beat.
    """
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(
        conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="heartbeat"
    )
    if action.state != Action.State.EXECUTING or action.generation != generation:
        raise ActionStateConflict(
            f"An action in state '{action.state}' (generation {action.generation}) is not executing for generation {generation}.",
            data={"run_id": run_id, "action_key": action_key, "state": action.state, "generation": action.generation},
        )
    action.lock_expires_at = _lock_deadline()
    action.save(update_fields=["lock_expires_at", "updated_at"])
    return action


def action_commit(
    *, run_id: str, action_key: str, generation: int, result: Any = None, external_ref: str = "", actor: str
) -> Action:
    """Record the outcome of an executed action. Committing the same action again is a no-op.

    The worker's own executing claim is committed in one statement (``cases.hotpath``); everything
    else (a repeat, a stale generation, another state) is decided under row locks.
    """
    if hotpath.available():
        action = hotpath.commit(
            run_id=run_id,
            action_key=action_key,
            generation=generation,
            result=result,
            external_ref=external_ref,
            actor=actor,
        )
        if action is not None:
            return action
    return _action_commit_locked(
        run_id=run_id,
        action_key=action_key,
        generation=generation,
        result=result,
        external_ref=external_ref,
        actor=actor,
    )


@refusals_kept
@transaction.atomic
def _action_commit_locked(
    *, run_id: str, action_key: str, generation: int, result: Any = None, external_ref: str = "", actor: str
) -> Action:
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(
        conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="commit"
    )
    if action.state == Action.State.COMMITTED and action.generation == generation:
        return action
    _require_action_move(action, Action.State.COMMITTED)
    if action.generation != generation:
        raise refusal_attach(
            LeaseFenced(
                "The action was claimed under another generation.",
                data={"action_generation": action.generation, "generation": generation},
            ),
            **_fenced_event(actor=actor, run_id=run_id, conn=conn, what="commit", generation=generation),
        )
    _action_transition(
        action,
        to=Action.State.COMMITTED,
        actor=actor,
        result=result,
        external_ref=external_ref or "",
        lock_expires_at=None,
        arguments={"external_ref": external_ref},
    )
    _run_went_past(run_id=run_id, action=action, generation=generation, actor=actor, how="committed")
    return action


@refusals_kept
@transaction.atomic
def action_mark_ambiguous(*, run_id: str, action_key: str, generation: int, reason: str, actor: str) -> Action:
    """The worker lost track of an executing action's outcome (timeout, crash): it must be reconciled."""
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(
        conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="ambiguous"
    )
    if action.state == Action.State.AMBIGUOUS:
        return action
    _require_action_move(action, Action.State.AMBIGUOUS)
    _action_transition(
        action, to=Action.State.AMBIGUOUS, actor=actor, lock_expires_at=None, arguments={"reason": reason}
    )
    return action


@refusals_kept
@transaction.atomic
def action_reconcile(
    *,
    run_id: str,
    action_key: str,
    found: bool,
    evidence: dict[str, Any],
    result: Any = None,
    external_ref: str = "",
    generation: int | None = None,
    actor: str,
) -> Action:
    """Settle an ambiguous action: the effect was found (it counts as committed) or is absent (it may execute again).

    Workers pass their generation and are fenced like any other write; operators and
    server-side reconcilers (``generation=None``) act for the case itself.
    """
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    if generation is None:
        action = Action.objects.select_for_update().get(run_id=run_id, action_key=action_key)
    else:
        action = _locked_action(
            conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="reconcile"
        )
    to = Action.State.RECONCILED_COMMITTED if found else Action.State.RECONCILED_ABSENT
    settled = (Action.State.RECONCILED_COMMITTED, Action.State.RECONCILED_ABSENT)
    if generation is None and action.state in settled and action.reconciled_by and action.reconciled_by != actor:
        raise ActionAlreadyReconciled(
            f"{run_id}/{action_key} was already reconciled ({action.state}) by {action.reconciled_by} "
            f"at {action.updated_at:%Y-%m-%d %H:%M:%S} UTC.",
            data={
                "run_id": run_id,
                "action_key": action_key,
                "state": action.state,
                "decided_by": action.reconciled_by,
                "decided_at": action.updated_at.isoformat(),
            },
        )
    if action.state == to:
        return action
    _require_action_move(action, to)
    changes: dict[str, Any] = {
        "evidence": evidence,
        "reconciled_by": actor,
        # The approval policy's record of this settling: kept past a re-execution, unlike the fields above.
        "reconciliations": [
            *action.reconciliations,
            {"actor": actor, "at": timezone.now().isoformat(), "evidence": evidence},
        ],
    }
    if found:
        changes.update(result=result, external_ref=external_ref or "")
    _action_transition(action, to=to, actor=actor, arguments={"found": found, "evidence": evidence}, **changes)
    if found and generation is not None:
        # The resumed worker found the effect under the new generation: the run is past that action (it goes on
        # with its result, without a further begin).
        _run_went_past(run_id=run_id, action=action, generation=generation, actor=actor, how="reconciled")
    else:
        _hold_for_approval(run_id=run_id, action=action, actor=actor, evidence=evidence)
    return action


def _hold_for_approval(*, run_id: str, action: Action, actor: str, evidence: dict[str, Any]) -> list[RecoveryCase]:
    """The approval policy, evaluated again as a reconciliation lands on a released run (the resumed worker's
    reconcile callback, or an operator by hand): one settled by hand or without evidence (``{}`` is none) holds each
    ``resuming`` case still waiting for the run in ``awaiting_approval`` and parks the run again, so ``begin`` answers
    ``parked`` and nothing executes again before an operator approves (``case_approve`` owes a fresh resume).
    Under ``never`` nothing waits. Lock order: action (held), run, case."""
    if settings.REVIVE_RESUME_APPROVAL == ApprovalPolicy.NEVER:
        return []
    decision = resume_approval_required(
        policy=ApprovalPolicy.AMBIGUOUS,
        reconciliations=[Reconciliation(action=f"{run_id}/{action.action_key}", actor=actor, evidence=evidence)],
    )
    if not decision.required:
        return []
    Run.objects.select_for_update(no_key=True).filter(pk=run_id).values_list("pk", flat=True).first()
    held = []
    for case_pk in sorted(
        set(
            CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True, case__state=CaseState.RESUMING).values_list(
                "case_id", flat=True
            )
        )
    ):
        case = case_lock(case_pk)
        if case.state == CaseState.RESUMING:
            held.append(
                case_transition(
                    case,
                    to=CaseState.AWAITING_APPROVAL,
                    actor=actor,
                    arguments={
                        "policy": settings.REVIVE_RESUME_APPROVAL,
                        "reasons": list(decision.reasons),
                        "held_run": run_id,
                    },
                )
            )
    if held:
        run_park_again(run_id=run_id, actor=actor, reason="a reconciliation waits for an operator's approval")
    return held


def reap_stale_actions(
    *, now=None, actor: str = "system:reaper", limit: int = 500, run_id: str | None = None
) -> list[Action]:
    """Mark every action still ``executing`` past its lock timeout as ``ambiguous`` (each in its own transaction);
    only ``run_id``'s when given (the watchdog)."""
    now = now or timezone.now()
    reaped = []
    qs = Action.objects.filter(state=Action.State.EXECUTING, lock_expires_at__lt=now)
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    ids = list(qs.values_list("pk", flat=True)[:limit])
    for pk in ids:
        with transaction.atomic():
            action = (
                Action.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, state=Action.State.EXECUTING, lock_expires_at__lt=now)
                .first()
            )
            if action is None:
                continue
            _action_transition(
                action,
                to=Action.State.AMBIGUOUS,
                actor=actor,
                lock_expires_at=None,
                arguments={"reason": "lock timeout expired"},
            )
            reaped.append(action)
    return reaped
