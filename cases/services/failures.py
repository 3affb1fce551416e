"""Credential failures: a provider's refusal classified, and the case it opens or joins (a worker's failed action
or report, a credential system's signal), or the grant recovered without a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from audit.services import audit_batched, audit_record, refusals_kept
from classifier import Classification, FailureClass, Provider, classify

from .. import signals
from ..errors import ConnectionNotFound
from ..inserts import insert_unless_conflict
from ..models import Action, CaseRun, CaseState, Checkpoint, Connection, CredentialGeneration, RecoveryCase, Run
from .cases import _case_join, _superseded_case_runs, case_transition
from .common import (
    _case_connection_id,
    _check_generation,
    _get_run,
    _lock_connection,
    _open_case_for,
    _open_cases,
    case_lock,
)
from .ledger import (
    _action_connection_id,
    _action_transition,
    _audit_fenced,
    _lock_action_connection,
    _locked_action,
    _require_action_move,
)
from .owed import case_reconcile_owe
from .runs import _checkpoint_get_or_create


class Outcome:
    PARKED = "parked"
    RETRY = "retry"
    REFRESH = "refresh"
    REACQUIRE = "reacquire"
    FAILED = "failed"


OWNER_CLASSES = {FailureClass.DEAD_GRANT, FailureClass.INTERACTION_REQUIRED, FailureClass.RELINK_REQUIRED}


# A case's class is the most actionable class of the reports joined to it, by this fixed order, whatever order
# they arrive in: what the owner fixes comes first -- signing in again before re-linking a vault's upstream
# account, which needs a live sign-in -- then what an operator must fix.
CASE_CLASS_ORDER = (
    FailureClass.DEAD_GRANT,
    FailureClass.INTERACTION_REQUIRED,
    FailureClass.RELINK_REQUIRED,
    FailureClass.MISCONFIGURATION,
    FailureClass.UNKNOWN,
)


def case_class_rank(failure_class: str) -> int:
    """0 is the most actionable; a class outside ``CASE_CLASS_ORDER`` ranks last."""
    try:
        return CASE_CLASS_ORDER.index(FailureClass(failure_class))
    except ValueError:
        return len(CASE_CLASS_ORDER)


@dataclass
class FailureAnswer:
    outcome: str
    failure_class: str
    code: str
    message: str
    retry_after: float | None = None
    case_reference: str | None = None
    current_generation: int | None = None
    signature: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _provider_error_record(c: Classification, status: int | None) -> dict[str, Any]:
    """What is kept of a provider error: classification and the provider's own code, never its headers or body.

    ``reason`` says what the owner must do; ``claims`` is a claims challenge (Entra CAE) the owner's sign-in must
    carry. Neither is a secret: both are kept on the case and audited with it.
    """
    record = {
        "status": status,
        "code": c.code,
        "message": c.description,
        "signature": c.signature,
        "failure_class": str(c.failure_class),
    }
    if c.reason:
        record["reason"] = c.reason
    if c.claims:
        record["claims"] = c.claims
    return record


def _case_open(
    *,
    conn: Connection,
    generation: int,
    c: Classification,
    status: int | None,
    run: Run | None,
    checkpoint: Checkpoint | None,
    action: Action | None,
    actor: str,
    signal: dict[str, Any] | None = None,
) -> RecoveryCase | None:
    """Open the case of a rejected (connection, generation); ``None`` when another transaction opened (or reopened)
    one first: the partial unique index ``one_open_case_per_connection_generation`` keeps this INSERT out, without a
    savepoint (``insert_unless_conflict``), and the caller joins that case."""
    owner_required = c.failure_class in OWNER_CLASSES
    case = RecoveryCase(
        namespace_id=conn.namespace_id,
        connection=conn,
        rejected_generation=generation,
        failure_class=str(c.failure_class),
        provider=conn.provider,
        provider_code=c.code[:80],
        provider_message=c.description,
        provider_error=_provider_error_record(c, status),
        owner_required=owner_required,
        run=run,
        checkpoint=checkpoint,
        action=action,
        state=CaseState.OPENED,
    )
    if not insert_unless_conflict(case):
        return None
    if case.reference is None:  # no trigger wrote it in the INSERT (SQLite): the same reference, written after
        case.reference = f"CASERV-{case.pk:04d}"
        RecoveryCase.objects.filter(pk=case.pk).update(reference=case.reference)
    CredentialGeneration.objects.filter(
        connection=conn, number=generation, state=CredentialGeneration.State.ISSUED
    ).update(state=CredentialGeneration.State.REJECTED, rejected_at=timezone.now())
    audit_record(
        actor=actor,
        action="case.opened",
        entity_type="case",
        entity_id=case.reference,
        case=case,
        run_id=run.pk if run else "",
        connection_id=conn.pk,
        before=None,
        after={
            "state": CaseState.OPENED,
            "failure_class": case.failure_class,
            "provider": conn.provider,
            "provider_code": case.provider_code,
            "rejected_generation": generation,
            "owner_required": owner_required,
        },
        arguments={
            "provider_error": case.provider_error,
            "checkpoint": checkpoint.checkpoint_id if checkpoint else None,
            "action_key": action.action_key if action else None,
            **({"signal": signal} if signal else {}),
        },
    )
    # Same transaction: reauth's receiver creates the owner's reconnect request and owes its notification.
    signals.case_opened.send(sender=RecoveryCase, case=case, actor=actor)
    return case


@dataclass(frozen=True)
class _Known:
    """What ``action_fail``'s locking read of the action already found, so ``_handle_failure`` does not read it again:
    the open case of the (connection, generation), and whether the run is in a released case it would supersede."""

    open_case_id: int | None
    superseded: bool


def _handle_failure(
    *,
    c: Classification,
    status: int | None,
    run: Run,
    conn: Connection,
    generation: int,
    checkpoint: Checkpoint | None,
    action: Action | None,
    actor: str,
    open_case_for_unknown: bool,
    known: _Known | None = None,
) -> FailureAnswer:
    base: dict[str, Any] = dict(
        failure_class=str(c.failure_class),
        code=c.code,
        message=c.description,
        signature=c.signature,
        current_generation=conn.current_generation,
    )
    if c.failure_class == FailureClass.TRANSIENT:
        retry_after = c.retry_after if c.retry_after is not None else settings.REVIVE_TRANSIENT_BACKOFF_SECONDS
        return FailureAnswer(outcome=Outcome.RETRY, retry_after=retry_after, **base)
    if c.failure_class == FailureClass.REFRESHABLE:
        return FailureAnswer(outcome=Outcome.REFRESH, **base)
    if c.failure_class == FailureClass.UNKNOWN and not open_case_for_unknown:
        return FailureAnswer(outcome=Outcome.FAILED, **base)
    if known is None:
        case = _open_case_for(conn, generation)
    else:
        case = RecoveryCase.objects.get(pk=known.open_case_id) if known.open_case_id is not None else None
    opened = (
        _case_open(
            conn=conn,
            generation=generation,
            c=c,
            status=status,
            run=run,
            checkpoint=checkpoint,
            action=action,
            actor=actor,
        )
        if case is None
        else None
    )
    if opened is not None:
        case, joined = opened, False  # a case opened in this transaction has no run yet
    else:
        if case is None:  # a concurrent opener (or a reopen) committed this generation's case first
            case = _open_case_for(conn, generation)
            if case is None:
                raise IntegrityError(f"no case opened for {conn.pk} generation {generation}, none open either")
        case = _case_reclassify(case, c=c, status=status, actor=actor)
        joined = CaseRun.objects.filter(case=case, run=run).exists()
    if not joined:
        _case_join(
            case=case,
            run=run,
            checkpoint=checkpoint,
            action=action,
            actor=actor,
            superseded=known.superseded if known is not None else True,
        )
    return FailureAnswer(outcome=Outcome.PARKED, case_reference=case.reference, **base)


def _case_reclassify(case: RecoveryCase, *, c: Classification, status: int | None, actor: str) -> RecoveryCase:
    """A joining report more actionable than the case's class (``CASE_CLASS_ORDER``) becomes the case's class.

    When it is the first report that needs the owner, the owner's link is issued here, in the same transaction.
    The caller holds the connection's exclusive lock, so reports on one (connection, generation) come here one
    at a time and the result does not depend on their order.
    """
    if case_class_rank(c.failure_class) >= case_class_rank(case.failure_class):
        return case
    case = case_lock(case.pk)
    if case_class_rank(c.failure_class) >= case_class_rank(case.failure_class):
        return case
    before = {
        "failure_class": case.failure_class,
        "provider_code": case.provider_code,
        "owner_required": case.owner_required,
    }
    case.failure_class = str(c.failure_class)
    case.provider_code = c.code[:80]
    case.provider_message = c.description
    case.provider_error = _provider_error_record(c, status)
    newly_owner = c.failure_class in OWNER_CLASSES and not case.owner_required
    case.owner_required = case.owner_required or c.failure_class in OWNER_CLASSES
    case.save(update_fields=["failure_class", "provider_code", "provider_message", "provider_error", "owner_required"])
    audit_record(
        actor=actor,
        action="case.reclassified",
        entity_type="case",
        entity_id=case.reference or "",
        case=case,
        run_id=case.run_id or "",
        connection_id=case.connection_id,
        before=before,
        after={
            "failure_class": case.failure_class,
            "provider_code": case.provider_code,
            "owner_required": case.owner_required,
        },
        arguments={"provider_error": case.provider_error},
    )
    if newly_owner:
        signals.case_needs_owner.send(sender=RecoveryCase, case=case, actor=actor)  # the link, notified on commit
    return case


def _classify(provider: str, provider_error: dict[str, Any]) -> Classification:
    return classify(
        provider=provider,
        status=provider_error.get("status"),
        body=provider_error.get("body"),
        headers=provider_error.get("headers"),
        error_kind=provider_error.get("error_kind"),
    )


def _exclusive_for(c: Classification) -> bool:
    return c.failure_class not in (FailureClass.TRANSIENT, FailureClass.REFRESHABLE)


def _exclusive_whatever_the_provider(provider_error: dict[str, Any]) -> bool | None:
    """The lock mode the error needs when every provider's classifier agrees on it (the usual case: a dead grant or a
    rate limit reads the same to all of them), so the connection is locked without reading its provider first;
    ``None`` when it depends on the provider. (An unknown provider name is classified as one of ``Provider``.)"""
    modes = {_exclusive_for(_classify(provider, provider_error)) for provider in Provider.values}
    return modes.pop() if len(modes) == 1 else None


def _classify_and_lock(
    *,
    connection_id: str | None,
    generation: int,
    provider_error: dict[str, Any],
    run_id: str,
    actor: str,
    what: str,
    action_key: str = "",
) -> tuple[Classification, Connection, FailureAnswer | None]:
    """Classify a provider error and lock its connection (``None``: the connection of the run's action
    ``action_key``) in the mode the class needs.

    Returns a ``reacquire`` answer (and writes nothing but the refusal) when the generation is already superseded.
    """
    exclusive = _exclusive_whatever_the_provider(provider_error)
    if exclusive is not None:
        conn = (
            _lock_connection(connection_id, exclusive=exclusive)
            if connection_id is not None
            else _lock_action_connection(run_id=run_id, action_key=action_key, exclusive=exclusive)
        )
        c = _classify(conn.provider, provider_error)
    else:
        if connection_id is None:
            connection_id = _action_connection_id(run_id, action_key)
        provider = Connection.objects.filter(pk=connection_id).values_list("provider", flat=True).first()
        if provider is None:
            raise ConnectionNotFound(data={"connection_id": connection_id})
        c = _classify(provider, provider_error)
        conn = _lock_connection(connection_id, exclusive=_exclusive_for(c))
    _check_generation(conn, generation)
    if generation < conn.current_generation:
        _audit_fenced(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation)
        return (
            c,
            conn,
            FailureAnswer(
                outcome=Outcome.REACQUIRE,
                failure_class=str(c.failure_class),
                code=c.code,
                message=c.description,
                current_generation=conn.current_generation,
            ),
        )
    return c, conn, None


@refusals_kept
@transaction.atomic
@audit_batched
def action_fail(
    *, run_id: str, action_key: str, generation: int, provider_error: dict[str, Any], actor: str
) -> FailureAnswer:
    """The provider refused the action and nothing happened: record it, classify it, and answer what the worker does next."""
    c, conn, stale = _classify_and_lock(
        connection_id=None,
        action_key=action_key,
        generation=generation,
        provider_error=provider_error,
        run_id=run_id,
        actor=actor,
        what="fail",
    )
    if stale is not None:
        # The generation moved on while the action ran, but the provider's refusal is still a fact: settle the
        # attempt (``failed``, nothing happened) so the retry with the new generation executes at once.
        action = Action.objects.select_for_update().filter(run_id=run_id, action_key=action_key).first()
        if action is not None and action.state == Action.State.EXECUTING and action.generation == generation:
            _action_transition(
                action,
                to=Action.State.FAILED,
                actor=actor,
                lock_expires_at=None,
                error=_provider_error_record(c, provider_error.get("status")),
                arguments={"failure_class": str(c.failure_class), "code": c.code, "stale_generation": True},
            )
        return stale
    # One locking read of the action brings its run and checkpoint, and -- read after the connection's lock, so
    # current -- what ``_handle_failure`` would otherwise read again (the open case, a case the run would supersede).
    action = _locked_action(
        conn=conn,
        run_id=run_id,
        action_key=action_key,
        generation=generation,
        actor=actor,
        what="fail",
        related=("run", "checkpoint"),
        annotations={
            "open_case_id": Subquery(_open_cases(conn, generation).values("pk")[:1]),
            "superseded_case": Exists(
                _superseded_case_runs(run_id=OuterRef("run_id"), connection_id=conn.pk, generation=generation)
            ),
        },
    )
    run = action.run
    if action.state != Action.State.FAILED:
        _require_action_move(action, Action.State.FAILED)
        _action_transition(
            action,
            to=Action.State.FAILED,
            actor=actor,
            lock_expires_at=None,
            error=_provider_error_record(c, provider_error.get("status")),
            arguments={"failure_class": str(c.failure_class), "code": c.code},
        )
    return _handle_failure(
        c=c,
        status=provider_error.get("status"),
        run=run,
        conn=conn,
        generation=generation,
        checkpoint=action.checkpoint,
        action=action,
        actor=actor,
        open_case_for_unknown=False,
        known=_Known(open_case_id=action.open_case_id, superseded=action.superseded_case),  # type: ignore[attr-defined]
    )


@transaction.atomic
def credential_failure_report(
    *,
    run_id: str,
    connection_id: str,
    generation: int,
    provider_error: dict[str, Any],
    checkpoint_id: str | None = None,
    action_key: str | None = None,
    actor: str,
) -> FailureAnswer:
    """A worker saw a credential failure outside a protected action (e.g. while refreshing)."""
    c, conn, stale = _classify_and_lock(
        connection_id=connection_id,
        generation=generation,
        provider_error=provider_error,
        run_id=run_id,
        actor=actor,
        what="report",
    )
    if stale is not None:
        return stale
    run = _get_run(run_id)
    checkpoint = (
        _checkpoint_get_or_create(run=run, checkpoint_id=checkpoint_id, label="", runtime_ref={}, actor=actor)
        if checkpoint_id
        else None
    )
    action = Action.objects.filter(run=run, action_key=action_key).first() if action_key else None
    return _handle_failure(
        c=c,
        status=provider_error.get("status"),
        run=run,
        conn=conn,
        generation=generation,
        checkpoint=checkpoint,
        action=action,
        actor=actor,
        open_case_for_unknown=True,
    )


@transaction.atomic
def case_open_from_signal(
    *, connection_id: str, classification: Classification, signal: dict[str, Any], actor: str
) -> tuple[RecoveryCase | None, bool]:
    """A credential system (a broker's webhook or status) says the current grant is dead before any worker hit it.

    For an owner class (dead grant, interaction required) the connection's current generation is marked
    rejected and a case is opened with no run yet -- in the same transaction, under the connection's
    exclusive lock, so the next ``action_begin`` on it parks and joins this case. Returns ``(case, opened)``;
    a case already open for the generation is returned unchanged (``opened`` False), and any other class opens
    nothing (``(None, False)``): the caller records it on the timeline.
    """
    conn = _lock_connection(connection_id, exclusive=True)
    case = _open_case_for(conn, conn.current_generation)
    if case is not None or classification.failure_class not in OWNER_CLASSES:
        return case, False
    case = _case_open(
        conn=conn,
        generation=conn.current_generation,
        c=classification,
        status=None,
        run=None,
        checkpoint=None,
        action=None,
        actor=actor,
        signal=signal,
    )
    if case is None:  # a concurrent opener (or a reopen) committed this generation's case first
        return _open_case_for(conn, conn.current_generation), False
    return case, True


@transaction.atomic
def case_recover_without_reconnect(*, case_id: str | int, actor: str, evidence: dict[str, Any]) -> RecoveryCase:
    """The credential system recovered the rejected grant by itself (Nango's retried refresh succeeded).

    Only while nobody has reconnected: the case still waits for its owner and the connection is still at the
    rejected generation. The generation is issued again (it works); a case no run has joined is closed as
    recovered, and a case with parked runs is marked reauthorized *at the same generation* and owed the
    pipeline's reconcile-and-release step (``cases.pipeline``), like any reauthorized case. Otherwise it returns the case unchanged.
    """
    conn = _lock_connection(_case_connection_id(case_id), exclusive=True)
    case = case_lock(case_id)
    if (
        case.state not in (CaseState.OPENED, CaseState.AWAITING_OWNER)
        or conn.current_generation != case.rejected_generation
    ):
        return case
    CredentialGeneration.objects.filter(
        connection=conn, number=case.rejected_generation, state=CredentialGeneration.State.REJECTED
    ).update(state=CredentialGeneration.State.ISSUED, rejected_at=None)
    arguments = {"recovered_by": "provider", "generation": case.rejected_generation, **evidence}
    if not CaseRun.objects.filter(case=case).exists():
        return case_transition(case, to=CaseState.CLOSED, actor=actor, arguments=arguments)
    case = case_transition(
        case, to=CaseState.REAUTHORIZED, actor=actor, arguments=arguments, resumed_generation=case.rejected_generation
    )
    case_reconcile_owe(case=case)  # the pipeline's usual reconcile-and-release, owed in this transaction
    return case
