"""Every write of the owner reconnect.

A reconnect request is the owner's capability for one case: created in the
transaction that opens an owner case, notified by a Celery task, opened
from its link, and settled exactly once by a sign-in through allauth.

Locks are taken case first, then the reconnect request (then, inside
``case_reauthorize``, the connection), so a reconnect, a resend and the case
moving on queue behind each other instead of deadlocking. No network call is
made while a lock is held: the notification task mints the link in one
transaction, sends outside it, and records the delivery in another.

The link token is minted by the notification task and exists only in the
message it sends; the database keeps its SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, TypedDict
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import audit_batch, audit_flush, audit_record
from cases.errors import CaseTransitionNotAllowed, LeaseFenced
from cases.models import CaseState, Connection, RecoveryCase
from cases.outbox import outbox_put
from cases.pipeline import recovery_reauthorized
from cases.services import case_lock

from .custody import Grant, get_custody
from .errors import (
    ReconnectError,
    ReconnectLinkExpired,
    ReconnectLinkInvalid,
    ReconnectLinkLocked,
    ReconnectLinkRevoked,
    ReconnectLinkUsed,
    ReconnectNotNeeded,
)
from .identity import ProviderIdentity, compare, expected_identity, rule_for
from .models import ReconnectRequest

SYSTEM = "system:reauth"
NOTIFY_OWNER = "reauth.notify_owner"
"""The outbox kind of the owner's notification (its handler is ``reauth.handlers``)."""
TOKEN_PREFIX = "rvr_"
TOKEN_BYTES = 32  # 256 bits of randomness
_TOKEN_SHAPE = re.compile(r"^rvr_[A-Za-z0-9_-]{43}$")
# A case in one of these states still needs its owner.
WAITING_STATES = (CaseState.OPENED, CaseState.AWAITING_OWNER)


# --------------------------------------------------------------------------- tokens


def token_mint() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_shape_ok(raw: str) -> bool:
    return bool(raw) and bool(_TOKEN_SHAPE.match(raw))


# --------------------------------------------------------------------------- helpers


def _audit(
    req: ReconnectRequest,
    *,
    case: RecoveryCase,
    actor: str,
    action: str,
    before: dict | None = None,
    after: dict | None = None,
    arguments: dict | None = None,
    outcome: str = "ok",
) -> Any:
    return audit_record(
        actor=actor,
        action=action,
        entity_type="reconnect_request",
        entity_id=str(req.public_id),
        case=case,
        run_id=case.run_id or "",
        connection_id=req.connection_id,
        before=before,
        after=after,
        arguments=arguments,
        outcome=outcome,
    )


def _move(
    req: ReconnectRequest, *, case: RecoveryCase, to: str, actor: str, arguments: dict | None = None, **changes: Any
) -> None:
    before = req.state
    req.state = to
    for name, value in changes.items():
        setattr(req, name, value)
    req.save()
    _audit(
        req,
        case=case,
        actor=actor,
        action=f"reconnect.{to}",
        before={"state": before},
        after={"state": to, **{k: v for k, v in changes.items() if isinstance(v, (str, int)) and k != "token_hash"}},
        arguments=arguments,
        outcome="ok" if to == ReconnectRequest.State.CONSUMED else to,
    )


def _lock(pk: int) -> ReconnectRequest:
    return ReconnectRequest.objects.select_for_update(no_key=True).get(pk=pk)


class RequestRow(TypedDict):
    """A reconnect request's id and its case's, read unlocked: the case is locked first, then the request."""

    pk: int
    case_id: int


def _locate(*, public_id: UUID | str) -> RequestRow:
    try:
        row = ReconnectRequest.objects.filter(public_id=public_id).values("pk", "case_id").first()
    except (ValueError, TypeError):  # a malformed UUID
        row = None
    if row is None:
        raise ReconnectLinkInvalid()
    return row


def _settle(
    req: ReconnectRequest,
    *,
    case: RecoveryCase,
    actor: str,
    now=None,
    issued: bool = True,
    generation: int | None = None,
) -> ReconnectError | None:
    """Bring a locked request up to date with the clock and its case; return what stops it, if anything.

    A request whose case no longer waits for the owner (or whose generation
    has moved on) is revoked; an issued request past its expiry expires. Both
    are recorded, so the caller commits before it raises the returned error.
    ``generation``: the connection's current generation, when the caller has read it (read here otherwise).
    """
    now = now or timezone.now()
    terminal: dict[str, type[ReconnectError]] = {
        ReconnectRequest.State.CONSUMED: ReconnectLinkUsed,
        ReconnectRequest.State.REVOKED: ReconnectLinkRevoked,
        ReconnectRequest.State.LOCKED: ReconnectLinkLocked,
        ReconnectRequest.State.EXPIRED: ReconnectLinkExpired,
    }
    if req.state in terminal:
        return terminal[req.state](data={"request": str(req.public_id)})
    if generation is None:
        generation = (
            Connection.objects.filter(pk=req.connection_id).values_list("current_generation", flat=True).first()
        )
    if case.state not in WAITING_STATES or generation != req.rejected_generation:
        _move(
            req,
            case=case,
            to=ReconnectRequest.State.REVOKED,
            actor=actor,
            revoked_at=now,
            revoked_reason="case_moved_on",
            arguments={"case_state": case.state, "current_generation": generation},
        )
        return ReconnectLinkRevoked(data={"request": str(req.public_id)})
    if issued and (req.expires_at is None or req.expires_at <= now):
        _move(
            req,
            case=case,
            to=ReconnectRequest.State.EXPIRED,
            actor=actor,
            arguments={"expires_at": req.expires_at.isoformat() if req.expires_at else None},
        )
        return ReconnectLinkExpired(data={"request": str(req.public_id)})
    return None


def _enqueue_notification(req: ReconnectRequest) -> None:
    """Owe the owner's notification in the transaction that created the request (``cases.outbox``): dispatched
    right after commit, and again by the outbox sweep if Redis loses the message or a worker dies sending it."""
    outbox_put(kind=NOTIFY_OWNER, key=f"{NOTIFY_OWNER}:{req.pk}", payload={"request_id": req.pk}, case=req.case_id)


# --------------------------------------------------------------------------- create, resend, revoke


@transaction.atomic(savepoint=False)
def reconnect_request_create(*, case: RecoveryCase, actor: str, new_case: bool = False) -> ReconnectRequest | None:
    """Create the owner's reconnect request for a case that needs the owner; repeating it returns the active one.

    Runs inside the transaction that opens the case; the owner is notified once it commits. ``new_case``: the case
    was inserted in this transaction, so no request can exist for it yet and no other transaction can see it to
    create one -- the request is simply inserted.
    """
    if not case.owner_required:
        return None
    if new_case:
        req = _request_new(case=case, actor=actor)
    else:
        existing = ReconnectRequest.objects.filter(case=case, state=ReconnectRequest.State.ACTIVE).first()
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                req = _request_new(case=case, actor=actor)
        except IntegrityError:  # a concurrent creator won: the partial unique index allows one active request per case
            return ReconnectRequest.objects.get(case=case, state=ReconnectRequest.State.ACTIVE)
    _audit(
        req,
        case=case,
        actor=actor,
        action="reconnect.requested",
        before=None,
        after={"state": req.state, "rejected_generation": req.rejected_generation},
    )
    _enqueue_notification(req)
    return req


def _request_new(*, case: RecoveryCase, actor: str) -> ReconnectRequest:
    return ReconnectRequest.objects.create(
        case=case,
        connection_id=case.connection_id,
        rejected_generation=case.rejected_generation,
        created_by=actor[:200],
    )


@transaction.atomic
def reconnect_request_resend(*, public_id: UUID | str, actor: str) -> ReconnectRequest:
    """Replace a request with a new one and a new link; the old link stops working at once.

    Idempotent per request: resending the same request again returns its replacement.
    """
    row = _locate(public_id=public_id)
    case = case_lock(row["case_id"])
    req = _lock(row["pk"])
    if req.replaced_by_id:
        return ReconnectRequest.objects.get(pk=req.replaced_by_id)
    problem = _settle(req, case=case, actor=actor, issued=False)
    if isinstance(problem, ReconnectLinkRevoked) and req.revoked_reason == "case_moved_on":
        raise ReconnectNotNeeded(data={"case_id": case.reference, "state": case.state})
    if req.state == ReconnectRequest.State.CONSUMED:
        raise ReconnectNotNeeded(data={"case_id": case.reference, "state": case.state})
    other = ReconnectRequest.objects.filter(case=case, state=ReconnectRequest.State.ACTIVE).exclude(pk=req.pk).first()
    if other is not None:
        return other
    if req.state == ReconnectRequest.State.ACTIVE:
        _move(
            req,
            case=case,
            to=ReconnectRequest.State.REVOKED,
            actor=actor,
            revoked_at=timezone.now(),
            revoked_reason="resent",
        )
    new = ReconnectRequest.objects.create(
        case=case,
        connection_id=case.connection_id,
        rejected_generation=case.rejected_generation,
        created_by=actor[:200],
    )
    ReconnectRequest.objects.filter(pk=req.pk).update(replaced_by=new)
    _audit(
        new,
        case=case,
        actor=actor,
        action="reconnect.requested",
        after={"state": new.state, "rejected_generation": new.rejected_generation},
        arguments={"replaces": str(req.public_id)},
    )
    _enqueue_notification(new)
    return new


def reconnect_requests_revoke_for_case(*, case: RecoveryCase, reason: str, actor: str) -> int:
    """Revoke the case's active request; call inside the transaction that moves the case on, holding its lock."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("reconnect_requests_revoke_for_case must run inside the case's transaction")
    revoked = 0
    for req in ReconnectRequest.objects.select_for_update(no_key=True).filter(
        case=case, state=ReconnectRequest.State.ACTIVE
    ):
        _move(
            req,
            case=case,
            to=ReconnectRequest.State.REVOKED,
            actor=actor,
            revoked_at=timezone.now(),
            revoked_reason=reason[:40],
        )
        revoked += 1
    return revoked


def reconnect_requests_expire(*, actor: str = SYSTEM, now=None, limit: int = 500) -> int:
    """Settle active requests past their expiry or whose case moved on (the beat sweep); each in its own transaction.

    Links are checked on every use anyway; the sweep keeps the states (and the console) current.
    """
    now = now or timezone.now()
    moved_on = ~Q(case__state__in=WAITING_STATES) | ~Q(connection__current_generation=F("rejected_generation"))
    rows = list(
        ReconnectRequest.objects.filter(state=ReconnectRequest.State.ACTIVE)
        .filter(Q(expires_at__lte=now) | moved_on)
        .values("pk", "case_id")[:limit]
    )
    settled = 0
    for row in rows:
        with transaction.atomic():
            case = case_lock(row["case_id"])
            req = _lock(row["pk"])
            if req.state == ReconnectRequest.State.ACTIVE and _settle(
                req, case=case, actor=actor, now=now, issued=req.expires_at is not None
            ):
                settled += 1
    return settled


# --------------------------------------------------------------------------- the owner's side


def reconnect_link_open(*, token: str, actor: str = "owner") -> ReconnectRequest:
    """Check a link token; answer the request it opens or raise why it cannot be used."""
    if not token_shape_ok(token):
        raise ReconnectLinkInvalid()
    row = ReconnectRequest.objects.filter(token_hash=token_hash(token)).values("pk", "case_id").first()
    if row is None:
        raise ReconnectLinkInvalid()
    return _check(row=row, actor=actor)


def reconnect_request_check(*, public_id: UUID | str, actor: str = "owner") -> ReconnectRequest:
    """The request behind a page, settled against the clock and its case."""
    return _check(row=_locate(public_id=public_id), actor=actor)


def _check(*, row: RequestRow, actor: str) -> ReconnectRequest:
    with transaction.atomic():
        case = case_lock(row["case_id"])
        req = _lock(row["pk"])
        problem = _settle(req, case=case, actor=actor)
    if problem is not None:
        raise problem
    return req


def reconnect_sign_in_started(
    *, public_id: UUID | str, provider_app: str, claims: str = "", actor: str = "owner"
) -> ReconnectRequest:
    """The owner pressed the button; ``claims`` is the claims challenge the sign-in carries (audited, not secret)."""
    row = _locate(public_id=public_id)
    with transaction.atomic():
        case = case_lock(row["case_id"])
        req = _lock(row["pk"])
        problem = _settle(req, case=case, actor=actor)
        if problem is None:
            arguments = {"provider_app": provider_app, **({"claims": claims} if claims else {})}
            _audit(req, case=case, actor=actor, action="reconnect.sign_in_started", arguments=arguments)
    if problem is not None:
        raise problem
    return req


@dataclass(frozen=True)
class Completion:
    """What a sign-in did to a request: consumed it (``generation`` is the new one) or was refused."""

    public_id: str
    consumed: bool
    generation: int | None = None
    refusal_event_id: int | None = None
    refusals: int = 0
    attempts_left: int = 0
    locked: bool = False
    mismatched: tuple[str, ...] = ()


def reconnect_request_complete(
    *,
    public_id: UUID | str,
    presented: ProviderIdentity,
    grant: Grant | None,
    actor: str,
    proof: dict[str, Any] | None = None,
) -> Completion:
    """Settle a request with the identity a sign-in proved.

    ``grant`` is ``None`` for a broker-held connection: the broker already holds the new grant, Revive stores
    none and records only where custody is (``proof`` says how the identity was proved, for the audit log).

    The same identity (see ``reauth.identity``): the request is consumed,
    the connection's generation advances by exactly one (``case_reauthorize``),
    the grant goes to the connection's custody, and reconciliation and resume
    are enqueued on commit -- all in one transaction, under the case and
    request row locks, so of two racing callbacks exactly one gets here and
    the other finds the request used.

    A different identity: nothing about it is kept but the audit event (both
    identities, no token); the request stays usable until
    ``REVIVE_RECONNECT_MAX_REFUSALS`` refusals lock it.
    """
    problem: ReconnectError | None = None
    try:
        with transaction.atomic(), audit_batch():
            case, req = _lock_case_and_request(public_id=public_id)
            problem = _settle(req, case=case, actor=actor, generation=case.connection.current_generation)
            if problem is None:
                result = _complete_locked(
                    req=req, case=case, presented=presented, grant=grant, actor=actor, proof=proof or {}
                )
    except (CaseTransitionNotAllowed, LeaseFenced):
        # The case or the generation moved between our read and case_reauthorize: the link no longer applies.
        row = _locate(public_id=public_id)
        with transaction.atomic():
            case = case_lock(row["case_id"])
            req = _lock(row["pk"])
            problem = _settle(req, case=case, actor=actor) or ReconnectLinkRevoked(data={"request": str(req.public_id)})
    if problem is not None:
        raise problem
    return result


def _lock_case_and_request(*, public_id: UUID | str) -> tuple[RecoveryCase, ReconnectRequest]:
    """Lock the request's case (read with its connection, which stays unlocked), then the request: the lock order of
    every write here, in two statements."""
    try:
        case = (
            RecoveryCase.objects.select_related("connection")
            .select_for_update(no_key=True, of=("self",))
            .filter(reconnect_requests__public_id=public_id)
            .first()
        )
    except (ValueError, TypeError):  # a malformed UUID
        case = None
    if case is None:
        raise ReconnectLinkInvalid()
    return case, ReconnectRequest.objects.select_for_update(no_key=True).get(public_id=public_id)


def _complete_locked(
    *,
    req: ReconnectRequest,
    case: RecoveryCase,
    presented: ProviderIdentity,
    grant: Grant | None,
    actor: str,
    proof: dict[str, Any],
) -> Completion:
    conn = case.connection  # read with the case's lock; the advance below locks it
    expected = expected_identity(conn)
    verdict = compare(rule=rule_for(conn.identity_provider), expected=expected, presented=presented)
    if not verdict.matches:
        limit = settings.REVIVE_RECONNECT_MAX_REFUSALS
        req.refusals += 1
        req.save(update_fields=["refusals", "updated_at"])
        event = _audit(
            req,
            case=case,
            actor=actor,
            action="reconnect.identity_mismatch",
            outcome="refused",
            before={"state": req.state},
            after={"refusals": req.refusals, "limit": limit},
            arguments={
                "rule": verdict.rule,
                "mismatched": list(verdict.mismatched),
                "expected": expected.evidence(),
                "presented": presented.evidence(),
                **proof,
            },
        )
        locked = req.refusals >= limit
        if locked:
            _move(
                req,
                case=case,
                to=ReconnectRequest.State.LOCKED,
                actor=actor,
                locked_at=timezone.now(),
                arguments={"refusals": req.refusals},
            )
        audit_flush()  # the refusal's event id is answered
        return Completion(
            public_id=str(req.public_id),
            consumed=False,
            refusal_event_id=event.pk,
            refusals=req.refusals,
            attempts_left=max(limit - req.refusals, 0),
            locked=locked,
            mismatched=verdict.mismatched,
        )

    _move(
        req,
        case=case,
        to=ReconnectRequest.State.CONSUMED,
        actor=actor,
        consumed_at=timezone.now(),
        arguments={"identity": presented.evidence(), "rule": verdict.rule},
    )
    # The one hand-over to the recovery pipeline: the generation advances and the rest of the recovery is owed,
    # in this transaction.
    case = recovery_reauthorized(
        case_id=case.pk,
        locked=case,
        actor=actor,
        evidence={"reconnect_request": str(req.public_id), "identity": presented.evidence(), "rule": verdict.rule},
    )
    generation = case.resumed_generation
    assert generation is not None  # a reauthorized case names the generation its runs resume under
    if grant is None:  # broker-held: the broker keeps the grant the owner just gave it; Revive stores no token
        audit_record(
            actor=actor,
            action="credential.custody_broker",
            entity_type="connection",
            entity_id=conn.pk,
            case=case,
            run_id=case.run_id or "",
            connection_id=conn.pk,
            after={
                **proof,
                "generation": generation,
                "custody": conn.provider,
                "integration": conn.broker_integration,
                "reference": conn.broker_connection or conn.broker_account,
            },
        )
    else:
        custody = get_custody()
        reference = custody.store(connection_id=conn.pk, generation=generation, grant=grant)
        audit_record(
            actor=actor,
            action="credential.custody_stored",
            entity_type="connection",
            entity_id=conn.pk,
            case=case,
            run_id=case.run_id or "",
            connection_id=conn.pk,
            after={
                "generation": generation,
                "custody": custody.name,
                "reference": reference,
                "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
                "renewable": bool(grant.refresh_token),
            },
        )
    return Completion(public_id=str(req.public_id), consumed=True, generation=generation)
