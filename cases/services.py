"""Every write of the recovery contract.

Each public function here is one transaction. Locks are always taken in the
same order -- connection, then run, then action, then case run, then case --
so concurrent callers queue instead of deadlocking. A connection row is locked ``FOR SHARE``
by writers that only need its generation to stay put (``action_begin``,
``action_commit``) and ``FOR UPDATE`` by writers that change what a generation
means (rejecting it, advancing it), so a begin can never interleave with the
generation moving underneath it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection as db, transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from audit.models import AuditEvent
from audit.redaction import redact
from audit.services import audit_record, audit_record_many, refusal_attach, refusals_kept
from classifier import Classification, FailureClass, classify
from revive_site.errors import ValidationFailed

from . import hotpath, outbox, selectors, signals
from .approval import (  # noqa: F401  (re-exported: the policy's public names stay importable from here)
    RECONCILED_ACTIONS,
    ApprovalDecision,
    ApprovalPolicy,
    Reconciliation,
    evidence_missing,
    reconciled_by_hand,
    resume_approval_required,
)
from .errors import (
    ActionAlreadyReconciled,
    ActionConnectionMismatch,
    ActionInProgress,
    ActionNotFound,
    ActionParamsMismatch,
    ActionStateConflict,
    CaseAlreadyDecided,
    CaseNotFound,
    FourEyesRefused,
    CaseTransitionNotAllowed,
    ConnectionConflict,
    ConnectionInvalid,
    ConnectionNotFound,
    GenerationUnknown,
    LeaseFenced,
    RunAbandoned,
    RunConflict,
    RunNotFound,
)
from .models import (
    BLOCKING_CASE_STATES,
    BROKER_PROVIDERS,
    DEFAULT_NAMESPACE,
    UPSTREAM_PROVIDERS,
    OPEN_CASE_STATES,
    RELEASED_CASE_STATES,
    Action,
    ApiKey,
    CaseNote,
    CaseRun,
    CaseState,
    Checkpoint,
    Connection,
    CredentialGeneration,
    OutboxItem,
    RecoveryCase,
    Run,
)

SYSTEM = "system"

# The pipeline's outbox kinds (their handlers are registered by ``cases.pipeline``).
RECONCILE_CASE = "case.reconcile"
RESUME_RUN = "run.resume"
ABANDON_RUN = "run.abandon"

# --------------------------------------------------------------------------- keys


def idempotency_key_for(*, run_id: str, action_key: str) -> str:
    """The stable idempotency key of (run, action key): the same on every attempt and every worker."""
    digest = hashlib.sha256(f"{run_id}\x00{action_key}".encode()).hexdigest()
    return f"rv1_{digest[:48]}"


def params_hash_for(params: Any) -> str:
    if params is None:
        return ""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hash_api_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def api_key_create(*, name: str, role: str = ApiKey.Role.WORKER, system_operate: bool = False, actor: str = SYSTEM,
                   namespace: str = DEFAULT_NAMESPACE) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is never stored and cannot be shown again."""
    prefix = secrets.token_hex(4)
    raw = f"rvk_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        name=name, role=role, system_operate=system_operate, prefix=prefix, key_hash=_hash_api_key(raw),
        namespace_id=namespace,
    )
    audit_record(
        actor=actor,
        action="api_key.created",
        entity_type="api_key",
        entity_id=str(key.pk),
        after={"name": name, "role": role, "system_operate": system_operate, "prefix": prefix, "namespace": namespace},
    )
    return key, raw


class _ApiKeyCache:
    """Live API keys of this process by hash, each trusted for ``REVIVE_API_KEY_CACHE_SECONDS``.

    Every worker API call authenticates, so a key found in the database is kept here for a few
    seconds and the call costs no round trip. Only live keys are kept (a key created in another
    process works at once); a key revoked or changed in another process is refused or re-read
    once its entry expires, so revocation takes effect within that window everywhere, and at once
    in the process that revoked it. The cache is bounded and forgets everything when full.
    """

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._entries: dict[str, tuple[ApiKey, float]] = {}

    def get(self, key_hash: str) -> ApiKey | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        key, expires = entry
        if time.monotonic() >= expires:
            self._entries.pop(key_hash, None)
            return None
        return key

    def put(self, key: ApiKey) -> None:
        ttl = settings.REVIVE_API_KEY_CACHE_SECONDS
        if ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key.key_hash] = (key, time.monotonic() + ttl)

    def clear(self) -> None:
        self._entries.clear()


api_key_cache = _ApiKeyCache()


def api_key_forget() -> None:
    """A key's access changed (revoked, role, namespace, system operate): this process re-reads every key.

    Cleared at once and again when the change commits, so a request of this process that read the key before the
    change committed cannot keep the old access in the cache. Other processes re-read within
    ``REVIVE_API_KEY_CACHE_SECONDS``.
    """
    api_key_cache.clear()
    transaction.on_commit(api_key_cache.clear)


def api_key_authenticate(raw: str | None) -> ApiKey | None:
    """The live key whose hash matches ``raw``, or None. No database round trip while the key is cached."""
    if not raw or len(raw) > 200:
        return None
    key_hash = _hash_api_key(raw)
    key = api_key_cache.get(key_hash)
    if key is not None:
        return key
    key = ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True).first()
    if key is not None:
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        api_key_cache.put(key)
    return key


@transaction.atomic
def api_key_revoke(*, key_id: int, actor: str) -> ApiKey:
    """Revoke a key: refused at once by this process, by every other within ``REVIVE_API_KEY_CACHE_SECONDS``."""
    key = ApiKey.objects.select_for_update().get(pk=key_id)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(actor=actor, action="api_key.revoked", entity_type="api_key", entity_id=str(key.pk),
                     before={"revoked": False}, after={"revoked": True})
    api_key_forget()
    return key


# --------------------------------------------------------------------------- locking


def _lock_connection(connection_id: str, *, exclusive: bool) -> Connection:
    """Lock a connection row; ``FOR SHARE`` unless ``exclusive`` (see the module docstring)."""
    qs = Connection.objects.filter(pk=connection_id)
    if exclusive:
        conn = qs.select_for_update().first()
    elif db.vendor == "postgresql":
        conn = next(iter(Connection.objects.raw("SELECT * FROM cases_connection WHERE id = %s FOR SHARE", [connection_id])), None)
    else:  # SQLite serialises writers with its database lock.
        conn = qs.first()
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    return conn


def _lock_connection_for_begin(connection_id: str) -> Connection:
    """``FOR SHARE`` lock of a connection, read together with the state of its current generation."""
    sql = (
        "SELECT c.*, g.state AS current_generation_state FROM cases_connection c "
        "LEFT JOIN cases_credentialgeneration g ON g.connection_id = c.id AND g.number = c.current_generation "
        "WHERE c.id = %s"
    )
    if db.vendor == "postgresql":
        sql += " FOR SHARE OF c"
    conn = next(iter(Connection.objects.raw(sql, [connection_id])), None)
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    return conn


def _get_run(run_id: str, *, lock: bool = False) -> Run:
    qs = Run.objects.filter(pk=run_id)
    run = (qs.select_for_update(no_key=True) if lock else qs).first()
    if run is None:
        raise RunNotFound(data={"run_id": run_id})
    return run


def _check_generation(conn: Connection, generation: int) -> None:
    if generation > conn.current_generation or generation < 1:
        raise GenerationUnknown(data={"connection_id": conn.pk, "generation": generation, "current_generation": conn.current_generation})


def _blocking_case(run: Run) -> RecoveryCase | None:
    return (
        RecoveryCase.objects.filter(case_runs__run=run, case_runs__resumed_at__isnull=True, state__in=BLOCKING_CASE_STATES)
        .order_by("opened_at")
        .first()
    )


# --------------------------------------------------------------------------- connections


def connection_broker_check(*, provider: str, upstream_provider: str = "", broker_integration: str = "",
                            broker_connection: str = "", broker_account: str = "") -> None:
    """A broker-held connection names its upstream provider and the broker's references; any other names none.

    Shared by ``connection_create`` and the admin form, so both refuse the same shapes.
    """
    problems: dict[str, str] = {}
    refs = {"broker_integration": broker_integration, "broker_connection": broker_connection, "broker_account": broker_account}
    if provider in BROKER_PROVIDERS:
        if upstream_provider not in UPSTREAM_PROVIDERS:
            problems["upstream_provider"] = f"required for {provider}: one of {', '.join(p.value for p in UPSTREAM_PROVIDERS)}"
        if provider == "nango":
            for name in ("broker_integration", "broker_connection"):
                if not refs[name]:
                    problems[name] = "required for nango (integration id and connection id)"
            if broker_account:
                problems["broker_account"] = "scalekit only"
        elif not broker_integration or not (broker_connection or broker_account):
            problems["broker_integration"] = "required for scalekit: the connector, and the identifier or the connected-account id"
    else:
        if upstream_provider:
            problems["upstream_provider"] = "only for broker-held connections (nango, scalekit)"
        problems.update({name: "only for broker-held connections (nango, scalekit)" for name, value in refs.items() if value})
    if problems:
        raise ConnectionInvalid(data={"provider": provider, "fields": problems})


@transaction.atomic
def connection_create(
    *,
    connection_id: str,
    provider: str,
    owner_email: str,
    provider_subject: str,
    provider_tenant: str = "",
    provider_issuer: str = "",
    provider_org: str = "",
    display_name: str = "",
    owner_name: str = "",
    upstream_provider: str = "",
    broker_integration: str = "",
    broker_connection: str = "",
    broker_account: str = "",
    actor: str = SYSTEM,
    namespace: str = DEFAULT_NAMESPACE,
) -> Connection:
    """Register a connection at generation 1; ``connection_id`` is the stored id (``cases.namespaces.qualify``) in
    ``namespace``. A broker-held one also carries the broker's references (see above)."""
    connection_broker_check(provider=provider, upstream_provider=upstream_provider, broker_integration=broker_integration,
                            broker_connection=broker_connection, broker_account=broker_account)
    try:
        with transaction.atomic():
            conn = Connection.objects.create(
                id=connection_id,
                namespace_id=namespace,
                provider=provider,
                owner_email=owner_email,
                owner_name=owner_name,
                display_name=display_name,
                provider_subject=provider_subject,
                provider_tenant=provider_tenant,
                provider_issuer=provider_issuer,
                provider_org=provider_org,
                upstream_provider=upstream_provider,
                broker_integration=broker_integration,
                broker_connection=broker_connection,
                broker_account=broker_account,
                current_generation=1,
            )
    except IntegrityError as exc:
        raise ConnectionConflict(data={"connection_id": connection_id}) from exc
    CredentialGeneration.objects.create(connection=conn, number=1)
    audit_record(
        actor=actor,
        action="connection.created",
        entity_type="connection",
        entity_id=conn.pk,
        connection_id=conn.pk,
        after={"provider": provider, "generation": 1, "subject": provider_subject, "tenant": provider_tenant,
               **({"upstream_provider": upstream_provider, "broker_integration": broker_integration,
                   "broker_connection": broker_connection, "broker_account": broker_account} if conn.broker_held else {})},
    )
    return conn


@dataclass(frozen=True)
class Lease:
    connection_id: str
    generation: int
    usable: bool
    case_reference: str | None


def lease_acquire(*, connection_id: str) -> Lease:
    """The connection's current generation, and whether it is usable or waits for a reconnect."""
    conn = Connection.objects.filter(pk=connection_id).first()
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    case = (
        RecoveryCase.objects.filter(connection=conn, rejected_generation=conn.current_generation, state__in=BLOCKING_CASE_STATES)
        .only("reference")
        .first()
    )
    return Lease(connection_id=conn.pk, generation=conn.current_generation, usable=case is None, case_reference=case.reference if case else None)


@transaction.atomic
def lease_advance(*, connection_id: str, from_generation: int, actor: str, case: RecoveryCase | None = None) -> int:
    """Advance the connection's generation by exactly one; repeating the call for the same ``from_generation`` is a no-op.

    Every worker still holding ``from_generation`` is fenced from this commit on.
    """
    conn = _lock_connection(connection_id, exclusive=True)
    if conn.current_generation != from_generation:
        if conn.current_generation == from_generation + 1:
            return conn.current_generation  # already advanced by this same step
        raise LeaseFenced(
            "The generation to advance from is not the current one.",
            data={"connection_id": connection_id, "from_generation": from_generation, "current_generation": conn.current_generation},
        )
    now = timezone.now()
    CredentialGeneration.objects.filter(connection=conn, number=from_generation).update(state=CredentialGeneration.State.SUPERSEDED, superseded_at=now)
    new = from_generation + 1
    CredentialGeneration.objects.create(connection=conn, number=new)
    Connection.objects.filter(pk=conn.pk).update(current_generation=new, updated_at=now)
    audit_record(
        actor=actor,
        action="lease.advanced",
        entity_type="connection",
        entity_id=conn.pk,
        connection_id=conn.pk,
        case=case,
        before={"generation": from_generation},
        after={"generation": new},
    )
    return new


# --------------------------------------------------------------------------- runs and checkpoints


@transaction.atomic
def run_register(*, run_id: str, runtime: str, runtime_ref: dict[str, Any], workflow_name: str, actor: str,
                 namespace: str = DEFAULT_NAMESPACE) -> Run:
    """Register a run; registering the same run again returns it (and refreshes the runtime reference).

    ``run_id`` is the stored id (``cases.namespaces.qualify``), so a run is only ever found again in its namespace.
    """
    run = Run.objects.select_for_update(no_key=True).filter(pk=run_id).first()
    if run is not None:
        if run.runtime != runtime or run.workflow_name != workflow_name:
            raise RunConflict(data={"run_id": run_id, "runtime": run.runtime, "workflow_name": run.workflow_name})
        if runtime_ref and runtime_ref != run.runtime_ref:
            before = run.runtime_ref
            run.runtime_ref = runtime_ref
            run.save(update_fields=["runtime_ref", "updated_at"])
            audit_record(actor=actor, action="run.runtime_ref_updated", entity_type="run", entity_id=run.pk, run_id=run.pk,
                         before={"runtime_ref": before}, after={"runtime_ref": runtime_ref})
        return run
    try:
        with transaction.atomic():
            run = Run.objects.create(id=run_id, namespace_id=namespace, runtime=runtime, runtime_ref=runtime_ref,
                                     workflow_name=workflow_name)
    except IntegrityError:
        return run_register(run_id=run_id, runtime=runtime, runtime_ref=runtime_ref, workflow_name=workflow_name, actor=actor,
                            namespace=namespace)
    audit_record(actor=actor, action="run.registered", entity_type="run", entity_id=run.pk, run_id=run.pk,
                 after={"state": run.state, "runtime": runtime, "workflow_name": workflow_name, "runtime_ref": runtime_ref})
    return run


def _checkpoint_get_or_create(*, run: Run, checkpoint_id: str, label: str, runtime_ref: dict[str, Any], actor: str) -> Checkpoint:
    cp = Checkpoint.objects.filter(run=run, checkpoint_id=checkpoint_id).first()
    if cp is not None:
        return cp
    try:
        with transaction.atomic():
            cp = Checkpoint.objects.create(run=run, checkpoint_id=checkpoint_id, label=label or checkpoint_id, runtime_ref=runtime_ref)
    except IntegrityError:
        return Checkpoint.objects.get(run=run, checkpoint_id=checkpoint_id)
    audit_record(actor=actor, action="checkpoint.recorded", entity_type="checkpoint", entity_id=f"{run.pk}/{checkpoint_id}",
                 run_id=run.pk, after={"checkpoint_id": checkpoint_id, "label": cp.label, "runtime_ref": runtime_ref})
    return cp


@transaction.atomic
def checkpoint_record(*, run_id: str, checkpoint_id: str, label: str = "", runtime_ref: dict[str, Any] | None = None, actor: str) -> Checkpoint:
    """Record a saved point of a run (idempotent per checkpoint id)."""
    run = _get_run(run_id)
    return _checkpoint_get_or_create(run=run, checkpoint_id=checkpoint_id, label=label, runtime_ref=runtime_ref or {}, actor=actor)


# --------------------------------------------------------------------------- actions


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


def _action_snapshot(action: Action) -> dict[str, Any]:
    return {"state": action.state, "generation": action.generation, "attempts": action.attempts}


def _action_transition(action: Action, *, to: str, actor: str, arguments: dict[str, Any] | None = None, **changes: Any) -> None:
    """Move an action (or insert a new one, whose ``state`` is None) and audit it."""
    before = _action_snapshot(action)
    action.state = to
    for name, value in changes.items():
        setattr(action, name, value)
    action.save()
    audit_record(
        actor=actor,
        action=f"action.{to}",
        entity_type="action",
        entity_id=f"{action.run_id}/{action.action_key}",
        run_id=action.run_id,
        connection_id=action.connection_id,
        before=before,
        after=_action_snapshot(action),
        arguments=arguments,
    )


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


def _require_action_move(action: Action, to: str) -> None:
    if to not in ACTION_TRANSITIONS[action.state]:
        raise ActionStateConflict(
            f"An action in state '{action.state}' cannot move to '{to}'.",
            data={"run_id": action.run_id, "action_key": action.action_key, "state": action.state, "to": to},
        )


def _fenced_event(*, actor: str, run_id: str, conn: Connection, what: str, generation: int) -> dict[str, Any]:
    return dict(actor=actor, action=f"{what}.fenced", entity_type="connection", entity_id=conn.pk, run_id=run_id,
                connection_id=conn.pk, arguments={"generation": generation, "current_generation": conn.current_generation},
                outcome="refused")


def _audit_fenced(*, actor: str, run_id: str, conn: Connection, what: str, generation: int) -> None:
    """A fenced write that answers instead of raising: its refusal commits with the answer."""
    audit_record(**_fenced_event(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation))


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
        if hotpath.begin_execute(run_id=run_id, checkpoint_id=checkpoint_id, connection_id=connection_id, action_key=action_key,
                                 generation=generation, idempotency_key=key, params_hash=params_hash_for(params), actor=actor):
            return BeginResult(decision=Decision.EXECUTE, idempotency_key=key, generation=generation, current_generation=generation,
                               action_state=Action.State.EXECUTING, attempt=1, lock_seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT)
    return _action_begin_locked(run_id=run_id, checkpoint_id=checkpoint_id, connection_id=connection_id, action_key=action_key,
                                generation=generation, params=params, actor=actor)


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
        checkpoint = _checkpoint_get_or_create(run=run, checkpoint_id=checkpoint_id, label="", runtime_ref={}, actor=actor)
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
                _action_transition(action, to=Action.State.AMBIGUOUS, actor="system:reaper", lock_expires_at=None,
                                   arguments={"reason": "lock timeout expired", "noticed_by": actor})
                return answer(Decision.RECONCILE, action)
            raise ActionInProgress(data={"action_key": action_key, "idempotency_key": key, **_lock_left(action)})
        return None

    action = Action.objects.select_for_update().filter(run=run, action_key=action_key).first()
    if action is not None and (res := settled(action)) is not None:
        return res

    if run.state == Run.State.ABANDONED:
        raise RunAbandoned(data={"run_id": run_id, "action_key": action_key,
                                 "case_id": _abandoned_by(run_id)})
    blocking = _blocking_case(run) if run.state == Run.State.PARKED else None
    if blocking is None and run.state == Run.State.PARKED:
        _run_relive(run=run, actor=actor)
    if blocking is None and conn.current_generation_state == CredentialGeneration.State.REJECTED:
        blocking = _open_case_for(conn, generation)
    to = Action.State.BEGUN if blocking is not None else Action.State.EXECUTING
    changes = {} if blocking is not None else dict(
        generation=generation, attempts=(action.attempts if action else 0) + 1, checkpoint=checkpoint, error=None,
        lock_expires_at=_lock_deadline(),
    )
    if action is None:
        fresh = Action(run=run, action_key=action_key, idempotency_key=key, connection=conn, checkpoint=checkpoint,
                       params_hash=phash, state=None, generation=generation)
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


def _lock_deadline() -> datetime:
    """Until when an executing action is locked without a heartbeat (``REVIVE_ACTION_LOCK_TIMEOUT``)."""
    return timezone.now() + timedelta(seconds=settings.REVIVE_ACTION_LOCK_TIMEOUT)


def _lock_left(action: Action) -> dict[str, Any]:
    """When a worker that met an executing action should ask again: when its lock runs out (at least a second)."""
    until = action.lock_expires_at
    left = (until - timezone.now()).total_seconds() if until else 0.0
    return {"lock_expires_at": until.isoformat() if until else None,
            "retry_after": round(min(max(left, 1.0), float(settings.REVIVE_ACTION_LOCK_TIMEOUT)), 3)}


def _run_relive(*, run: Run, actor: str) -> None:
    """A parked run whose cases have all been released talks to Revive with a current generation: it is live again.

    This is the case after a resume that was reported failed but reached the run anyway (a runtime that completed
    a timed-out call later): the run proceeds, and each ``resume_failed`` case of the run follows it back to
    ``resuming`` (it becomes ``resumed`` once the run is past its parked action).
    """
    if not Run.objects.filter(pk=run.pk, state=Run.State.PARKED).update(state=Run.State.ACTIVE, updated_at=timezone.now()):
        return
    run.state = Run.State.ACTIVE
    audit_record(actor=actor, action="run.unparked", entity_type="run", entity_id=run.pk, run_id=run.pk,
                 before={"state": Run.State.PARKED}, after={"state": Run.State.ACTIVE},
                 arguments={"reason": "the run came back with a current generation after its cases were released"})
    for case_pk in sorted(set(CaseRun.objects.filter(run=run, resumed_at__isnull=True, case__state=CaseState.RESUME_FAILED)
                              .values_list("case_id", flat=True))):
        case = case_lock(case_pk)
        if case.state == CaseState.RESUME_FAILED:
            case_transition(case, to=CaseState.RESUMING, actor=actor,
                            arguments={"reason": f"run {run.pk} is live again with the new generation"})


def _run_went_past(*, run_id: str, action: Action, generation: int, actor: str, how: str) -> list[str]:
    """``action`` of a run committed (or replayed) with ``generation``: the run is past the action it was parked on
    for each released case of that connection that parked it on this action (or on no action at all).

    Marks those case runs resumed and finishes each case whose runs are all past (``_case_finish_if_resumed``).
    Case runs are locked before their cases, in the module's lock order. Returns the cases that became resumed.
    """
    if generation < 2:
        return []  # no reconnect ever happened on this connection: nothing can be waiting for this run
    pending = list(
        CaseRun.objects.select_for_update(no_key=True)
        .filter(run_id=run_id, resumed_at__isnull=True, case__state__in=RELEASED_CASE_STATES,
                case__connection_id=action.connection_id, case__resumed_generation__lte=generation)
        .filter(Q(action=action) | Q(action__isnull=True))
        .order_by("pk")
    )
    if not pending:
        return []
    now = timezone.now()
    CaseRun.objects.filter(pk__in=[cr.pk for cr in pending]).update(resumed_at=now)
    finished = []
    for case_pk in sorted({cr.case_id for cr in pending}):
        case = case_lock(case_pk)
        audit_record(actor=actor, action="run.resumed", entity_type="run", entity_id=run_id, case=case, run_id=run_id,
                     connection_id=case.connection_id,
                     after={"generation": generation, "past": f"{run_id}/{action.action_key}", "how": how})
        if case.state == CaseState.RESUME_FAILED:
            case_transition(case, to=CaseState.RESUMING, actor=actor,
                            arguments={"reason": f"run {run_id} went past its parked action"})
        if _case_finish_if_resumed(case, actor=actor):
            finished.append(case.reference)
    return finished


def _case_finish_if_resumed(case: RecoveryCase, *, actor: str) -> bool:
    """The one rule of ``resumed``: a released case is resumed when every run it blocked is past the action it was
    parked on under the new generation (``CaseRun.resumed_at``). The caller holds the case's row lock, so of two
    last runs going past together one sees the other's mark."""
    if case.state != CaseState.RESUMING or CaseRun.objects.filter(case=case, resumed_at__isnull=True).exists():
        return False
    case_transition(case, to=CaseState.RESUMED, actor=actor)
    return True


def case_finish_if_resumed(*, case_id: str | int, actor: str) -> bool:
    """``_case_finish_if_resumed`` in its own transaction (the watchdog, after it settled a case's runs)."""
    with transaction.atomic():
        return _case_finish_if_resumed(case_lock(case_id), actor=actor)


@transaction.atomic
def action_heartbeat(*, run_id: str, action_key: str, generation: int, actor: str) -> Action:
    """The worker executing an action is alive: extend its lock by ``REVIVE_ACTION_LOCK_TIMEOUT`` from now.

    Only the current generation's executing attempt may extend it; any other state is a conflict (the reaper or
    a reconciliation settled it meanwhile), so a worker that lost its action learns it at its next beat.
    """
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor,
                            what="heartbeat")
    if action.state != Action.State.EXECUTING or action.generation != generation:
        raise ActionStateConflict(
            f"An action in state '{action.state}' (generation {action.generation}) is not executing for generation {generation}.",
            data={"run_id": run_id, "action_key": action_key, "state": action.state, "generation": action.generation})
    action.lock_expires_at = _lock_deadline()
    action.save(update_fields=["lock_expires_at", "updated_at"])
    return action


def _locked_action(*, conn: Connection, run_id: str, action_key: str, generation: int, actor: str, what: str) -> Action:
    """Lock the action for a write that must come from the worker holding the current generation."""
    _check_generation(conn, generation)
    if generation < conn.current_generation:
        raise refusal_attach(
            LeaseFenced(data={"connection_id": conn.pk, "generation": generation, "current_generation": conn.current_generation}),
            **_fenced_event(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation),
        )
    action = Action.objects.select_for_update().filter(run_id=run_id, action_key=action_key).first()
    if action is None:
        if not Run.objects.filter(pk=run_id).exists():
            raise RunNotFound(data={"run_id": run_id})
        raise ActionNotFound(data={"run_id": run_id, "action_key": action_key})
    if action.connection_id != conn.pk:
        raise ActionConnectionMismatch(data={"action_key": action_key, "connection_id": action.connection_id})
    return action


def _action_connection_id(run_id: str, action_key: str) -> str:
    conn_id = Action.objects.filter(run_id=run_id, action_key=action_key).values_list("connection_id", flat=True).first()
    if conn_id is None:
        if not Run.objects.filter(pk=run_id).exists():
            raise RunNotFound(data={"run_id": run_id})
        raise ActionNotFound(data={"run_id": run_id, "action_key": action_key})
    return conn_id


def action_commit(*, run_id: str, action_key: str, generation: int, result: Any = None, external_ref: str = "", actor: str) -> Action:
    """Record the outcome of an executed action. Committing the same action again is a no-op.

    The worker's own executing claim is committed in one statement (``cases.hotpath``); everything
    else (a repeat, a stale generation, another state) is decided under row locks.
    """
    if hotpath.available():
        action = hotpath.commit(run_id=run_id, action_key=action_key, generation=generation, result=result,
                                external_ref=external_ref, actor=actor)
        if action is not None:
            return action
    return _action_commit_locked(run_id=run_id, action_key=action_key, generation=generation, result=result,
                                 external_ref=external_ref, actor=actor)


@refusals_kept
@transaction.atomic
def _action_commit_locked(*, run_id: str, action_key: str, generation: int, result: Any = None, external_ref: str = "", actor: str) -> Action:
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="commit")
    if action.state == Action.State.COMMITTED and action.generation == generation:
        return action
    _require_action_move(action, Action.State.COMMITTED)
    if action.generation != generation:
        raise refusal_attach(
            LeaseFenced("The action was claimed under another generation.", data={"action_generation": action.generation, "generation": generation}),
            **_fenced_event(actor=actor, run_id=run_id, conn=conn, what="commit", generation=generation),
        )
    _action_transition(action, to=Action.State.COMMITTED, actor=actor, result=result, external_ref=external_ref or "",
                       lock_expires_at=None, arguments={"external_ref": external_ref})
    _run_went_past(run_id=run_id, action=action, generation=generation, actor=actor, how="committed")
    return action


@refusals_kept
@transaction.atomic
def action_mark_ambiguous(*, run_id: str, action_key: str, generation: int, reason: str, actor: str) -> Action:
    """The worker lost track of an executing action's outcome (timeout, crash): it must be reconciled."""
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    action = _locked_action(conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="ambiguous")
    if action.state == Action.State.AMBIGUOUS:
        return action
    _require_action_move(action, Action.State.AMBIGUOUS)
    _action_transition(action, to=Action.State.AMBIGUOUS, actor=actor, lock_expires_at=None, arguments={"reason": reason})
    return action


@refusals_kept
@transaction.atomic
def action_reconcile(
    *, run_id: str, action_key: str, found: bool, evidence: dict[str, Any], result: Any = None, external_ref: str = "",
    generation: int | None = None, actor: str,
) -> Action:
    """Settle an ambiguous action: the effect was found (it counts as committed) or is absent (it may execute again).

    Workers pass their generation and are fenced like any other write; operators and
    server-side reconcilers (``generation=None``) act for the case itself.
    """
    conn = _lock_connection(_action_connection_id(run_id, action_key), exclusive=False)
    if generation is None:
        action = Action.objects.select_for_update().get(run_id=run_id, action_key=action_key)
    else:
        action = _locked_action(conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="reconcile")
    to = Action.State.RECONCILED_COMMITTED if found else Action.State.RECONCILED_ABSENT
    settled = (Action.State.RECONCILED_COMMITTED, Action.State.RECONCILED_ABSENT)
    if generation is None and action.state in settled and action.reconciled_by and action.reconciled_by != actor:
        raise ActionAlreadyReconciled(
            f"{run_id}/{action_key} was already reconciled ({action.state}) by {action.reconciled_by} "
            f"at {action.updated_at:%Y-%m-%d %H:%M:%S} UTC.",
            data={"run_id": run_id, "action_key": action_key, "state": action.state,
                  "decided_by": action.reconciled_by, "decided_at": action.updated_at.isoformat()},
        )
    if action.state == to:
        return action
    _require_action_move(action, to)
    changes: dict[str, Any] = {"evidence": evidence, "reconciled_by": actor}
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
    decision = resume_approval_required(policy=ApprovalPolicy.AMBIGUOUS, reconciliations=[
        Reconciliation(action=f"{run_id}/{action.action_key}", actor=actor, evidence=evidence)])
    if not decision.required:
        return []
    Run.objects.select_for_update(no_key=True).filter(pk=run_id).values_list("pk", flat=True).first()
    held = []
    for case_pk in sorted(set(CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True,
                                                     case__state=CaseState.RESUMING).values_list("case_id", flat=True))):
        case = case_lock(case_pk)
        if case.state == CaseState.RESUMING:
            held.append(case_transition(case, to=CaseState.AWAITING_APPROVAL, actor=actor, arguments={
                "policy": settings.REVIVE_RESUME_APPROVAL, "reasons": list(decision.reasons), "held_run": run_id}))
    if held:
        run_park_again(run_id=run_id, actor=actor, reason="a reconciliation waits for an operator's approval")
    return held


def reap_stale_actions(*, now=None, actor: str = "system:reaper", limit: int = 500, run_id: str | None = None) -> list[Action]:
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
            action = Action.objects.select_for_update(skip_locked=True).filter(pk=pk, state=Action.State.EXECUTING, lock_expires_at__lt=now).first()
            if action is None:
                continue
            _action_transition(action, to=Action.State.AMBIGUOUS, actor=actor, lock_expires_at=None,
                               arguments={"reason": "lock timeout expired"})
            reaped.append(action)
    return reaped


# --------------------------------------------------------------------------- credential failures


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
    record = {"status": status, "code": c.code, "message": c.description, "signature": c.signature,
              "failure_class": str(c.failure_class)}
    if c.reason:
        record["reason"] = c.reason
    if c.claims:
        record["claims"] = c.claims
    return record


def _open_case_for(conn: Connection, generation: int) -> RecoveryCase | None:
    return RecoveryCase.objects.filter(connection=conn, rejected_generation=generation, state__in=OPEN_CASE_STATES).first()


CASE_TRANSITIONS: dict[str, set[str]] = {
    # ``closed`` straight from a waiting state: the credential system recovered the grant itself (see
    # ``case_recover_without_reconnect``) before anyone reconnected and before any run was blocked.
    CaseState.OPENED: {CaseState.AWAITING_OWNER, CaseState.REAUTHORIZED, CaseState.ABANDONED, CaseState.CLOSED},
    CaseState.AWAITING_OWNER: {CaseState.REAUTHORIZED, CaseState.ABANDONED, CaseState.CLOSED},
    CaseState.REAUTHORIZED: {CaseState.RECONCILING, CaseState.AWAITING_APPROVAL, CaseState.RESUMING, CaseState.ABANDONED},
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

# The four live transitions of the incident record.
LIVE_TRANSITIONS = {
    "case.opened": (1, "grant rejected"),
    "case.reauthorized": (2, "access restored"),
    "lease.advanced": (3, "lease advanced"),
    "case.resumed": (4, "execution resumed"),
}


def case_transition(case: RecoveryCase, *, to: str, actor: str, arguments: dict[str, Any] | None = None, **changes: Any) -> RecoveryCase:
    """Move a locked case; the caller holds its row lock inside the transaction."""
    if not db.in_atomic_block:
        raise RuntimeError("case_transition must run inside a transaction holding the case's row lock")
    if to not in CASE_TRANSITIONS[case.state]:
        raise CaseTransitionNotAllowed(
            f"Case {case.reference} is {case.state}; it cannot move to {to}.",
            data={"case_id": case.reference, "state": case.state, "to": to},
        )
    before = case.state
    case.state = to
    case.state_changed_at = timezone.now()
    if to in (CaseState.CLOSED, CaseState.ABANDONED):
        case.closed_at = case.state_changed_at
    for name, value in changes.items():
        setattr(case, name, value)
    case.save()
    audit_record(actor=actor, action=f"case.{to}", entity_type="case", entity_id=case.reference, case=case,
                 run_id=case.run_id or "", connection_id=case.connection_id, before={"state": before},
                 after={"state": to, **{k: v for k, v in changes.items() if isinstance(v, (str, int, type(None)))}},
                 arguments=arguments)
    signals.case_state_changed.send(sender=RecoveryCase, case=case, before=before, actor=actor)
    return case


def case_lock(case_id: str | int) -> RecoveryCase:
    """Lock a case by reference (``CASERV-0001``) or primary key."""
    case = _case_queryset(case_id).select_for_update(no_key=True).first()
    if case is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    return case


def _case_queryset(case_id: str | int):
    if isinstance(case_id, str) and not case_id.isdigit():
        return RecoveryCase.objects.filter(reference=case_id)
    return RecoveryCase.objects.filter(pk=int(case_id))


def _case_connection_id(case_id: str | int) -> str:
    conn_id = _case_queryset(case_id).values_list("connection_id", flat=True).first()
    if conn_id is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    return conn_id


def _case_join(*, case: RecoveryCase, run: Run, checkpoint: Checkpoint | None, action: Action | None, actor: str) -> None:
    """Block ``run`` on ``case``. A released case of the same connection whose new generation was rejected in turn
    is over for this run: the run did come back with it, and this case takes over (so the older one can finish)."""
    superseded = list(CaseRun.objects.filter(run=run, resumed_at__isnull=True, case__state__in=RELEASED_CASE_STATES,
                                             case__connection_id=case.connection_id,
                                             case__resumed_generation__lte=case.rejected_generation)
                      .values_list("pk", "case_id"))
    CaseRun.objects.create(case=case, run=run, checkpoint=checkpoint, action=action)
    if case.run_id is None:  # a case opened before any run hit it (a broker's signal): the first run to join is its run
        RecoveryCase.objects.filter(pk=case.pk, run__isnull=True).update(run=run, checkpoint=checkpoint, action=action)
        case.run, case.checkpoint, case.action = run, checkpoint, action
    if superseded:
        CaseRun.objects.filter(pk__in=[pk for pk, _ in superseded]).update(resumed_at=timezone.now())
        for case_pk in sorted({c for _, c in superseded}):
            older = case_lock(case_pk)
            audit_record(actor=actor, action="run.resumed", entity_type="run", entity_id=run.pk, case=older,
                         run_id=run.pk, connection_id=older.connection_id,
                         after={"generation": case.rejected_generation, "how": "rejected again", "next_case": case.reference})
            if older.state == CaseState.RESUME_FAILED:
                case_transition(older, to=CaseState.RESUMING, actor=actor,
                                arguments={"reason": f"run {run.pk} came back and is now blocked by {case.reference}"})
            _case_finish_if_resumed(older, actor=actor)
    if run.state != Run.State.PARKED:
        Run.objects.filter(pk=run.pk).update(state=Run.State.PARKED, updated_at=timezone.now())
        audit_record(actor=actor, action="run.parked", entity_type="run", entity_id=run.pk, case=case, run_id=run.pk,
                     connection_id=case.connection_id, before={"state": run.state}, after={"state": Run.State.PARKED},
                     arguments={"checkpoint": checkpoint.checkpoint_id if checkpoint else None, "action_key": action.action_key if action else None})
        run.state = Run.State.PARKED


def _case_open(*, conn: Connection, generation: int, c: Classification, status: int | None, run: Run | None,
               checkpoint: Checkpoint | None, action: Action | None, actor: str,
               signal: dict[str, Any] | None = None) -> RecoveryCase:
    owner_required = c.failure_class in OWNER_CLASSES
    case = RecoveryCase.objects.create(
        namespace_id=conn.namespace_id, connection=conn, rejected_generation=generation, failure_class=str(c.failure_class), provider=conn.provider,
        provider_code=c.code[:80], provider_message=c.description, provider_error=_provider_error_record(c, status),
        owner_required=owner_required, run=run, checkpoint=checkpoint, action=action, state=CaseState.OPENED,
    )
    case.reference = f"CASERV-{case.pk:04d}"
    RecoveryCase.objects.filter(pk=case.pk).update(reference=case.reference)
    gen = CredentialGeneration.objects.filter(connection=conn, number=generation).first()
    if gen is not None and gen.state == CredentialGeneration.State.ISSUED:
        CredentialGeneration.objects.filter(pk=gen.pk).update(state=CredentialGeneration.State.REJECTED, rejected_at=timezone.now())
    audit_record(actor=actor, action="case.opened", entity_type="case", entity_id=case.reference, case=case,
                 run_id=run.pk if run else "",
                 connection_id=conn.pk, before=None,
                 after={"state": CaseState.OPENED, "failure_class": case.failure_class, "provider": conn.provider,
                        "provider_code": case.provider_code, "rejected_generation": generation, "owner_required": owner_required},
                 arguments={"provider_error": case.provider_error,
                            "checkpoint": checkpoint.checkpoint_id if checkpoint else None,
                            "action_key": action.action_key if action else None,
                            **({"signal": signal} if signal else {})})
    # Same transaction: reauth's receiver creates the owner's reconnect request and owes its notification.
    signals.case_opened.send(sender=RecoveryCase, case=case, actor=actor)
    return case


def _handle_failure(*, c: Classification, status: int | None, run: Run, conn: Connection, generation: int,
                    checkpoint: Checkpoint | None, action: Action | None, actor: str, open_case_for_unknown: bool) -> FailureAnswer:
    base = dict(failure_class=str(c.failure_class), code=c.code, message=c.description, signature=c.signature,
                current_generation=conn.current_generation)
    if c.failure_class == FailureClass.TRANSIENT:
        retry_after = c.retry_after if c.retry_after is not None else settings.REVIVE_TRANSIENT_BACKOFF_SECONDS
        return FailureAnswer(outcome=Outcome.RETRY, retry_after=retry_after, **base)
    if c.failure_class == FailureClass.REFRESHABLE:
        return FailureAnswer(outcome=Outcome.REFRESH, **base)
    if c.failure_class == FailureClass.UNKNOWN and not open_case_for_unknown:
        return FailureAnswer(outcome=Outcome.FAILED, **base)
    case = _open_case_for(conn, generation)
    if case is None:
        try:
            with transaction.atomic():
                case = _case_open(conn=conn, generation=generation, c=c, status=status, run=run, checkpoint=checkpoint, action=action, actor=actor)
        except IntegrityError:  # the partial unique index caught a concurrent opener
            case = _open_case_for(conn, generation)
            if case is None:
                raise
            case = _case_reclassify(case, c=c, status=status, actor=actor)
    else:
        case = _case_reclassify(case, c=c, status=status, actor=actor)
    if not CaseRun.objects.filter(case=case, run=run).exists():
        _case_join(case=case, run=run, checkpoint=checkpoint, action=action, actor=actor)
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
    before = {"failure_class": case.failure_class, "provider_code": case.provider_code, "owner_required": case.owner_required}
    case.failure_class = str(c.failure_class)
    case.provider_code = c.code[:80]
    case.provider_message = c.description
    case.provider_error = _provider_error_record(c, status)
    newly_owner = c.failure_class in OWNER_CLASSES and not case.owner_required
    case.owner_required = case.owner_required or c.failure_class in OWNER_CLASSES
    case.save(update_fields=["failure_class", "provider_code", "provider_message", "provider_error", "owner_required"])
    audit_record(actor=actor, action="case.reclassified", entity_type="case", entity_id=case.reference, case=case,
                 run_id=case.run_id, connection_id=case.connection_id, before=before,
                 after={"failure_class": case.failure_class, "provider_code": case.provider_code,
                        "owner_required": case.owner_required},
                 arguments={"provider_error": case.provider_error})
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


def _classify_and_lock(*, connection_id: str, generation: int, provider_error: dict[str, Any], run_id: str, actor: str,
                       what: str) -> tuple[Classification, Connection, FailureAnswer | None]:
    """Classify a provider error and lock its connection in the mode the class needs.

    Returns a ``reacquire`` answer (and writes nothing but the refusal) when the generation is already superseded.
    """
    provider = Connection.objects.filter(pk=connection_id).values_list("provider", flat=True).first()
    if provider is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    c = _classify(provider, provider_error)
    conn = _lock_connection(connection_id, exclusive=_exclusive_for(c))
    _check_generation(conn, generation)
    if generation < conn.current_generation:
        _audit_fenced(actor=actor, run_id=run_id, conn=conn, what=what, generation=generation)
        return c, conn, FailureAnswer(outcome=Outcome.REACQUIRE, failure_class=str(c.failure_class), code=c.code,
                                      message=c.description, current_generation=conn.current_generation)
    return c, conn, None


@refusals_kept
@transaction.atomic
def action_fail(*, run_id: str, action_key: str, generation: int, provider_error: dict[str, Any], actor: str) -> FailureAnswer:
    """The provider refused the action and nothing happened: record it, classify it, and answer what the worker does next."""
    c, conn, stale = _classify_and_lock(connection_id=_action_connection_id(run_id, action_key), generation=generation,
                                        provider_error=provider_error, run_id=run_id, actor=actor, what="fail")
    if stale is not None:
        # The generation moved on while the action ran, but the provider's refusal is still a fact: settle the
        # attempt (``failed``, nothing happened) so the retry with the new generation executes at once.
        action = Action.objects.select_for_update().filter(run_id=run_id, action_key=action_key).first()
        if action is not None and action.state == Action.State.EXECUTING and action.generation == generation:
            _action_transition(action, to=Action.State.FAILED, actor=actor, lock_expires_at=None,
                               error=_provider_error_record(c, provider_error.get("status")),
                               arguments={"failure_class": str(c.failure_class), "code": c.code, "stale_generation": True})
        return stale
    run = _get_run(run_id)
    action = _locked_action(conn=conn, run_id=run_id, action_key=action_key, generation=generation, actor=actor, what="fail")
    if action.state != Action.State.FAILED:
        _require_action_move(action, Action.State.FAILED)
        _action_transition(action, to=Action.State.FAILED, actor=actor, lock_expires_at=None,
                           error=_provider_error_record(c, provider_error.get("status")),
                           arguments={"failure_class": str(c.failure_class), "code": c.code})
    return _handle_failure(c=c, status=provider_error.get("status"), run=run, conn=conn, generation=generation,
                           checkpoint=action.checkpoint, action=action, actor=actor, open_case_for_unknown=False)


@transaction.atomic
def credential_failure_report(
    *, run_id: str, connection_id: str, generation: int, provider_error: dict[str, Any], checkpoint_id: str | None = None,
    action_key: str | None = None, actor: str,
) -> FailureAnswer:
    """A worker saw a credential failure outside a protected action (e.g. while refreshing)."""
    c, conn, stale = _classify_and_lock(connection_id=connection_id, generation=generation, provider_error=provider_error,
                                        run_id=run_id, actor=actor, what="report")
    if stale is not None:
        return stale
    run = _get_run(run_id)
    checkpoint = _checkpoint_get_or_create(run=run, checkpoint_id=checkpoint_id, label="", runtime_ref={}, actor=actor) if checkpoint_id else None
    action = Action.objects.filter(run=run, action_key=action_key).first() if action_key else None
    return _handle_failure(c=c, status=provider_error.get("status"), run=run, conn=conn, generation=generation,
                           checkpoint=checkpoint, action=action, actor=actor, open_case_for_unknown=True)


@transaction.atomic
def case_open_from_signal(*, connection_id: str, classification: Classification, signal: dict[str, Any],
                          actor: str) -> tuple[RecoveryCase | None, bool]:
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
    try:
        with transaction.atomic():
            case = _case_open(conn=conn, generation=conn.current_generation, c=classification, status=None, run=None,
                              checkpoint=None, action=None, actor=actor, signal=signal)
    except IntegrityError:  # the partial unique index caught a concurrent opener
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
    if case.state not in (CaseState.OPENED, CaseState.AWAITING_OWNER) or conn.current_generation != case.rejected_generation:
        return case
    CredentialGeneration.objects.filter(connection=conn, number=case.rejected_generation,
                                        state=CredentialGeneration.State.REJECTED).update(
        state=CredentialGeneration.State.ISSUED, rejected_at=None)
    arguments = {"recovered_by": "provider", "generation": case.rejected_generation, **evidence}
    if not CaseRun.objects.filter(case=case).exists():
        return case_transition(case, to=CaseState.CLOSED, actor=actor, arguments=arguments)
    case = case_transition(case, to=CaseState.REAUTHORIZED, actor=actor, arguments=arguments,
                           resumed_generation=case.rejected_generation)
    case_reconcile_owe(case=case)  # the pipeline's usual reconcile-and-release, owed in this transaction
    return case


# --------------------------------------------------------------------------- case lifecycle


@transaction.atomic
def case_await_owner(*, case_id: str | int, actor: str) -> RecoveryCase:
    """The owner has been asked to reconnect."""
    case = case_lock(case_id)
    if case.state == CaseState.AWAITING_OWNER:
        return case
    return case_transition(case, to=CaseState.AWAITING_OWNER, actor=actor)


@transaction.atomic
def case_reauthorize(*, case_id: str | int, actor: str, evidence: dict[str, Any] | None = None) -> RecoveryCase:
    """Access is restored for the case's connection: advance the generation by one and mark the case reauthorized.

    Repeating it after it succeeded returns the case unchanged. The connection is locked
    before the case, in the module's lock order.
    """
    _lock_connection(_case_connection_id(case_id), exclusive=True)
    case = case_lock(case_id)
    if case.state == CaseState.REAUTHORIZED or (case.resumed_generation and case.state in (
            CaseState.RECONCILING, CaseState.AWAITING_APPROVAL, CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED)):
        return case
    if CaseState.REAUTHORIZED not in CASE_TRANSITIONS[case.state]:
        raise CaseTransitionNotAllowed(data={"case_id": case.reference, "state": case.state, "to": CaseState.REAUTHORIZED})
    # 02 access restored, then 03 lease advanced: both in this one transaction.
    case_transition(case, to=CaseState.REAUTHORIZED, actor=actor, arguments=evidence or {},
                    resumed_generation=case.rejected_generation + 1)
    lease_advance(connection_id=case.connection_id, from_generation=case.rejected_generation, actor=actor, case=case)
    return case


def _lock_case_runs_then_case(case_id: str | int) -> RecoveryCase:
    """Lock every run of the case (by primary key), then the case.

    Releasing a run blocked on several connections is decided with its runs locked: two cases released at the
    same instant queue on their shared runs, so the second sees the first's release and unparks them (a case
    lock alone let each see the other still blocking and leave the shared runs parked).
    """
    pk = _case_queryset(case_id).values_list("pk", flat=True).first()
    if pk is None:
        raise CaseNotFound(data={"case_id": str(case_id)})
    run_ids = list(CaseRun.objects.filter(case_id=pk).order_by("run_id").values_list("run_id", flat=True))
    list(Run.objects.select_for_update(no_key=True).filter(pk__in=run_ids).order_by("pk").values_list("pk", flat=True))
    return case_lock(pk)


@transaction.atomic
def case_resume_begin(*, case_id: str | int, actor: str, defer_ambiguous: bool = False) -> RecoveryCase:
    """Release the case's runs: ambiguous actions first go to reconciliation, otherwise the case moves to ``resuming``.

    When ``REVIVE_RESUME_APPROVAL`` asks for an operator (``resume_approval_required``), a ``reauthorized`` or
    ``reconciling`` case moves to ``awaiting_approval`` instead and its runs stay parked; only ``case_approve``
    releases it from there.

    With ``defer_ambiguous`` the case resumes although some actions are still ambiguous: their settling is left
    to the resumed worker's ``reconcile`` callback (``action_begin`` answers ``reconcile`` for an ambiguous
    action, so none of them can execute again before it is settled).

    Each run whose every blocking case has been released goes back to ``active`` and is owed one resume
    delivery (an outbox row, in this transaction). A ``resume_failed`` case is released again the same way (the
    operator's retry). Repeating the call changes nothing.
    """
    case = _lock_case_runs_then_case(case_id)
    if case.state in (CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED):
        return case
    if case.state == CaseState.AWAITING_APPROVAL:
        return case  # only an operator's case_approve releases it
    ambiguous = list(selectors.case_ambiguous_actions(case)
                     .values_list("run_id", "action_key"))
    if ambiguous and not defer_ambiguous and case.state != CaseState.RESUME_FAILED:
        if case.state != CaseState.RECONCILING:
            case_transition(case, to=CaseState.RECONCILING, actor=actor)
        return case
    if case.state in (CaseState.REAUTHORIZED, CaseState.RECONCILING):
        approval = case_resume_approval(case)
        if approval.required:
            return case_transition(case, to=CaseState.AWAITING_APPROVAL, actor=actor,
                                   arguments={"policy": approval.policy, "reasons": list(approval.reasons)})
    retry = case.state == CaseState.RESUME_FAILED
    case_transition(case, to=CaseState.RESUMING, actor=actor,
                    arguments={"reconcile_in_worker": [f"{r}/{k}" for r, k in ambiguous]} if ambiguous else None)
    _case_release_runs(case, actor=actor, retry=retry)
    if not CaseRun.objects.filter(case=case).exists():  # opened by a broker's signal; no run ever waited on it
        case_transition(case, to=CaseState.RESUMED, actor=actor, arguments={"runs": 0})
    return case


def _case_release_runs(case: RecoveryCase, *, actor: str, retry: bool = False) -> list[str]:
    """Unpark each run of a case moving to ``resuming`` that no other case still blocks, and owe each released run
    that has not had its resume (every one, for a ``retry``) one delivery. The caller holds the runs' locks
    (``_lock_case_runs_then_case``). Returns the runs owed a delivery.

    Set-based: one query finds the runs and whether another case blocks each, then one UPDATE unparks them all,
    one INSERT audits them, one UPDATE resets the re-drive count of those whose resume failed before, and the
    deliveries are owed together (``run_resume_owe_many``): the same statements for 10 runs as for 10,000.
    """
    blocked_elsewhere = (CaseRun.objects.filter(run_id=OuterRef("run_id"), resumed_at__isnull=True,
                                                case__state__in=BLOCKING_CASE_STATES).exclude(case_id=case.pk))
    rows = list(CaseRun.objects.filter(case=case, resumed_at__isnull=True)
                .annotate(blocked=Exists(blocked_elsewhere)).filter(blocked=False)
                .filter(run__state__in=(Run.State.PARKED, Run.State.ACTIVE))
                .order_by("run_id").values_list("pk", "run_id", "run__state", "resume_sent_at"))
    parked = [run_id for _, run_id, state, _ in rows if state == Run.State.PARKED]
    if parked:
        Run.objects.filter(pk__in=parked, state=Run.State.PARKED).update(state=Run.State.ACTIVE, updated_at=timezone.now())
        audit_record_many([dict(actor=actor, action="run.unparked", entity_type="run", entity_id=run_id, case=case,
                                run_id=run_id, connection_id=case.connection_id, before={"state": Run.State.PARKED},
                                after={"state": Run.State.ACTIVE}) for run_id in parked])
    # A run whose resume failed (it was parked again) gets a fresh delivery and a fresh count of re-drives.
    again = [pk for pk, _, state, sent_at in rows if state == Run.State.PARKED and sent_at is not None]
    if again:
        CaseRun.objects.filter(pk__in=again).update(resume_sent_at=None, resume_attempts=0)
    owed = [run_id for _, run_id, state, sent_at in rows if sent_at is None or state == Run.State.PARKED]
    run_resume_owe_many(run_ids=owed, case=case, attempt=0, retry=retry)
    if retry:
        # A run Revive executes that stopped after it went past its parked action (``case_resume_fail`` with
        # ``stopped_run``): the retry continues it from its latest checkpoint, with a fresh count of continuations.
        stopped = list(Run.objects.filter(case_runs__case=case, case_runs__resumed_at__isnull=False,
                                          state=Run.State.ACTIVE, hosted_at__isnull=False)
                       .order_by("pk").values_list("pk", flat=True).distinct())
        if stopped:
            Run.objects.filter(pk__in=stopped).update(continuations=0, hosted_at=timezone.now())
            for run_id in stopped:
                run_continue_owe(run_id=run_id, case=case, continuation=1, retry=True)
            owed += stopped
    return owed


@transaction.atomic
def case_runs_release(*, case_id: str | int, actor: str) -> list[str]:
    """Release again the runs of a ``resuming`` case that no case blocks any more (the watchdog's backstop of
    ``case_resume_begin``); returns the runs owed a delivery."""
    case = _lock_case_runs_then_case(case_id)
    if case.state != CaseState.RESUMING:
        return []
    return _case_release_runs(case, actor=actor)


def run_resume_owe(*, run_id: str, case: RecoveryCase, attempt: int, retry: bool = False) -> None:
    """Owe ``run_id`` one resume delivery for ``case`` (re-drive ``attempt``): an outbox row in the caller's
    transaction, so the delivery exists exactly when the release (or re-drive) that owes it commits. The row's
    key names the release, so repeating one owes nothing twice; an operator's ``retry`` is a new release."""
    run_resume_owe_many(run_ids=[run_id], case=case, attempt=attempt, retry=retry)


def run_resume_owe_many(*, run_ids: list[str], case: RecoveryCase, attempt: int, retry: bool = False) -> None:
    """``run_resume_owe`` for several runs of one case, in a fixed number of statements."""
    if not run_ids:
        return
    generation = case.resumed_generation
    earlier: dict[str, int] = {}
    if retry:
        earlier = dict(OutboxItem.objects.filter(kind=RESUME_RUN, case=case, run_id__in=run_ids).order_by()
                       .values_list("run_id").annotate(n=Count("pk")).values_list("run_id", "n"))
    steps = []
    for run_id in run_ids:
        key = f"{RESUME_RUN}:{run_id}:{case.pk}:g{generation}:a{attempt}"
        if retry:
            key += f":retry{earlier.get(run_id, 0)}"
        steps.append((key, {"run_id": run_id, "case_id": case.pk, "generation": generation, "attempt": attempt}, run_id))
    outbox.outbox_put_many(kind=RESUME_RUN, steps=steps, case=case)


def run_continue_owe(*, run_id: str, case: RecoveryCase, continuation: int, retry: bool = False) -> None:
    """Owe a run Revive executes, stopped after its parked action, one continuation from its latest checkpoint (a
    ``run.resume`` row whose ``attempt`` is the continuation's number: the delivery continues the run, see
    ``resume.run_resume_deliver``). Keyed by the stop (the run's ``hosted_at``) and the number, so each stop's
    continuations are owed once; an operator's ``retry`` is a new one."""
    run = Run.objects.only("hosted_at").get(pk=run_id)
    stop = f"{run.hosted_at.timestamp():.6f}" if run.hosted_at else "-"
    key = f"{RESUME_RUN}:{run_id}:{case.pk}:g{case.resumed_generation}:c{continuation}:{stop}"
    if retry:
        key += f":retry{OutboxItem.objects.filter(kind=RESUME_RUN, case=case, run_id=run_id).count()}"
    outbox.outbox_put(kind=RESUME_RUN, key=key, run_id=run_id, case=case,
                      payload={"run_id": run_id, "case_id": case.pk, "generation": case.resumed_generation,
                               "attempt": continuation})


def case_reconcile_owe(*, case: RecoveryCase) -> None:
    """Owe the reconcile-and-release step of a reauthorized case (in the caller's transaction)."""
    generation = case.resumed_generation
    outbox.outbox_put(kind=RECONCILE_CASE, key=f"{RECONCILE_CASE}:{case.pk}:g{generation}",
                      payload={"case_id": case.pk, "generation": generation}, case=case)


# --------------------------------------------------------------------------- approvals and operator exits


def case_resume_approval(case: RecoveryCase) -> ApprovalDecision:
    """The policy's answer for ``case``, from the reconciliations the audit log recorded for its runs since it opened.

    Reconciliations from before the case opened belong to an earlier incident and do not count.
    """
    policy = getattr(settings, "REVIVE_RESUME_APPROVAL", ApprovalPolicy.AMBIGUOUS)
    if policy != ApprovalPolicy.AMBIGUOUS:
        return resume_approval_required(policy=policy, reconciliations=())
    events = (
        AuditEvent.objects.filter(run_id__in=CaseRun.objects.filter(case=case).values("run_id"), entity_type="action",
                                  action__in=RECONCILED_ACTIONS, occurred_at__gte=case.opened_at)
        .order_by("occurred_at", "id")
        .values_list("entity_id", "actor", "arguments")
    )
    return resume_approval_required(
        policy=policy,
        reconciliations=[Reconciliation(action=entity, actor=actor, evidence=(arguments or {}).get("evidence"))
                         for entity, actor, arguments in events],
    )


def case_four_eyes(case: RecoveryCase) -> dict[str, str]:
    """The operators who may not approve ``case``'s resume under ``REVIVE_FOUR_EYES``, each with why: whoever
    reconciled one of its runs' actions by hand, and whoever resent the owner link that was used."""
    barred: dict[str, str] = {}
    for actor in (AuditEvent.objects.filter(run_id__in=CaseRun.objects.filter(case=case).values("run_id"),
                                            entity_type="action", action__in=RECONCILED_ACTIONS,
                                            occurred_at__gte=case.opened_at, actor__startswith="operator:")
                  .order_by().values_list("actor", flat=True).distinct()):
        barred[actor] = "reconciled an action by hand"
    # Through the reverse relation reauth's requests declare: cases does not import reauth.
    for actor in case.reconnect_requests.filter(state="consumed", created_by__startswith="operator:").values_list(
            "created_by", flat=True):
        barred.setdefault(actor, "resent the owner link that was used")
    return barred


def _required_text(value: str | None, *, name: str) -> str:
    text = (value or "").strip()
    if not text:
        raise ValidationFailed(f"A {name} is required.", data={"field": name})
    return text[:2000]


@dataclass(frozen=True)
class CaseDecision:
    """Who moved a case by a decision (approve, reject, abandon, retry, reconcile by hand), and when."""

    what: str
    actor: str
    at: Any

    def refusal(self, case: RecoveryCase) -> CaseAlreadyDecided:
        return CaseAlreadyDecided(
            f"{case.reference} was already {self.what} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S} UTC.",
            data={"case_id": case.reference, "state": case.state, "decision": self.what, "decided_by": self.actor,
                  "decided_at": self.at.isoformat()},
        )


def case_last_decision(case: RecoveryCase) -> CaseDecision | None:
    """The audited move that put ``case`` in its current state (the latest ``case.<state>`` event), if any."""
    from audit.models import AuditEvent

    event = (AuditEvent.objects.filter(case_id=case.pk, action=f"case.{case.state}")
             .order_by("-occurred_at", "-id").only("actor", "occurred_at", "arguments").first())
    if event is None:
        return None
    args = event.arguments or {}
    what = ("approved" if args.get("approved") else "rejected" if args.get("rejected") else
            "reopened" if args.get("reopened") else "abandoned" if case.state == CaseState.ABANDONED else
            f"moved to {case.state}")
    return CaseDecision(what=what, actor=event.actor, at=event.occurred_at)


def _approval(case: RecoveryCase) -> CaseDecision | None:
    from audit.models import AuditEvent

    event = (AuditEvent.objects.filter(case_id=case.pk, action="case.resuming", arguments__approved=True)
             .order_by("-occurred_at", "-id").only("actor", "occurred_at").first())
    return CaseDecision(what="approved", actor=event.actor, at=event.occurred_at) if event else None


def _decided_elsewhere(case: RecoveryCase, decision: CaseDecision | None, *, actor: str) -> RecoveryCase:
    """The conditional transition found its source state gone: the same actor repeating gets the case back
    (every write path is safe to repeat); anyone else is told who decided and when."""
    if decision is None:
        raise CaseTransitionNotAllowed(f"Case {case.reference} is {case.state}.",
                                       data={"case_id": case.reference, "state": case.state})
    if decision.actor == actor:
        return case
    raise decision.refusal(case)


@transaction.atomic
def case_approve(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """An operator releases a case waiting in ``awaiting_approval``: it moves to ``resuming``, its runs are unparked,
    and each released run is owed its resume in this transaction exactly as on the automatic path. Approving an
    already approved case returns it unchanged.

    The move is conditional on the state read under the row lock: of two operators approving at once, one
    approves and the other gets ``CASE_ALREADY_DECIDED`` naming the first; the same operator repeating gets the
    case back unchanged.
    """
    reason = _required_text(reason, name="reason")
    case = _lock_case_runs_then_case(case_id)
    if case.state == CaseState.AWAITING_APPROVAL and settings.REVIVE_FOUR_EYES:
        barred = case_four_eyes(case)
        if actor in barred:
            raise FourEyesRefused(
                f"{actor} {barred[actor]} on {case.reference}: another operator must approve its resume.",
                data={"case_id": case.reference, "barred": sorted(barred)})
    if case.state != CaseState.AWAITING_APPROVAL:
        if case.state in (CaseState.RESUMING, CaseState.RESUMED, CaseState.CLOSED, CaseState.RESUME_FAILED):
            approval = _approval(case)
            if approval is not None:
                return _decided_elsewhere(case, approval, actor=actor)
        raise _not_allowed(case, "only a case awaiting approval can be approved", to=CaseState.RESUMING)
    ambiguous = [f"{r}/{k}" for r, k in selectors.case_ambiguous_actions(case)
                 .values_list("run_id", "action_key")]
    arguments: dict[str, Any] = {"approved": True, "reason": reason}
    if ambiguous:
        arguments["reconcile_in_worker"] = ambiguous
    # Held after a resume had been delivered (``_hold_for_approval``): the runs are owed a fresh delivery.
    held_after_resume = OutboxItem.objects.filter(kind=RESUME_RUN, case=case).exists()
    case_transition(case, to=CaseState.RESUMING, actor=actor, arguments=arguments)
    _case_release_runs(case, actor=actor, retry=held_after_resume)
    return case


@transaction.atomic
def case_reject(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """An operator refuses a resume waiting for approval: the case is abandoned with the reason."""
    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state == CaseState.ABANDONED:
        return _decided_elsewhere(case, case_last_decision(case), actor=actor)
    if case.state != CaseState.AWAITING_APPROVAL:
        approval = _approval(case)
        if approval is not None:
            raise approval.refusal(case)
        raise _not_allowed(case, "only a case awaiting approval can be rejected", to=CaseState.ABANDONED)
    return _case_abandon_locked(case, actor=actor, arguments={"rejected": True, "reason": reason})


@transaction.atomic
def case_abandon(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """Give up on a case: it stops blocking its runs (they stay parked for their owners) and its owner link is revoked.
    A case another operator abandoned (or rejected) meanwhile is refused with who did it."""
    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state == CaseState.ABANDONED:
        return _decided_elsewhere(case, case_last_decision(case), actor=actor)
    if CaseState.ABANDONED not in CASE_TRANSITIONS[case.state]:
        raise_moved(case)
    return _case_abandon_locked(case, actor=actor, arguments={"reason": reason})


def _not_allowed(case: RecoveryCase, rule: str, *, to: str) -> CaseTransitionNotAllowed:
    """A wrong-state refusal that names the decision which last moved the case."""
    data: dict[str, Any] = {"case_id": case.reference, "state": case.state, "to": to}
    message = f"Case {case.reference} is {case.state}; {rule}."
    decision = case_last_decision(case)
    if decision is not None:
        message += f" It was {decision.what} by {decision.actor} at {decision.at:%Y-%m-%d %H:%M:%S} UTC."
        data.update(decided_by=decision.actor, decided_at=decision.at.isoformat())
    return CaseTransitionNotAllowed(message, data=data)


def raise_moved(case: RecoveryCase) -> None:
    """Refuse a decision on a case whose state no longer allows it, naming the last decision that moved it."""
    decision = case_last_decision(case)
    if decision is not None:
        raise decision.refusal(case)
    raise CaseTransitionNotAllowed(f"Case {case.reference} is {case.state}.",
                                   data={"case_id": case.reference, "state": case.state})


@transaction.atomic
def case_retry_resume(*, case_id: str | int, actor: str) -> RecoveryCase:
    """An operator retries a ``resume_failed`` case; of two retrying at once, the second is told who retried.
    The caller dispatches the resume (``cases.resume.case_resume_dispatch``) in the same transaction."""
    case = case_lock(case_id)
    if case.state != CaseState.RESUME_FAILED:
        if case.state == CaseState.RESUMING:
            decision = case_last_decision(case)
            return _decided_elsewhere(case, decision, actor=actor)
        raise_moved(case)
    return case


def _case_abandon_locked(case: RecoveryCase, *, actor: str, arguments: dict[str, Any]) -> RecoveryCase:
    case_transition(case, to=CaseState.ABANDONED, actor=actor, arguments=arguments)
    # Same transaction: reauth's receiver revokes the owner's active link.
    signals.case_abandoned.send(sender=RecoveryCase, case=case, reason="case_abandoned", actor=actor)
    runs_abandon_owe(case=case, reason=arguments.get("reason", ""))
    return case


def runs_abandon_owe(*, case: RecoveryCase, reason: str) -> list[str]:
    """Owe each run the abandoned ``case`` leaves parked, and that no other open case holds, the notice that its
    case was abandoned (``run.abandon``, dispatched after ``REVIVE_ABANDON_NOTICE_DELAY_SECONDS``). A run another
    open case still holds stays parked for that case. Returns the runs owed a notice.

    In the abandoning transaction; a second abandon after a reopen owes a new notice (the key counts them).
    """
    held_elsewhere = (CaseRun.objects.filter(run_id=OuterRef("run_id"), resumed_at__isnull=True,
                                             case__state__in=OPEN_CASE_STATES).exclude(case_id=case.pk))
    run_ids = list(CaseRun.objects.filter(case=case, resumed_at__isnull=True, run__state=Run.State.PARKED)
                   .annotate(held=Exists(held_elsewhere)).filter(held=False)
                   .order_by("run_id").values_list("run_id", flat=True).distinct())
    if not run_ids:
        return []
    earlier = dict(OutboxItem.objects.filter(kind=ABANDON_RUN, case=case, run_id__in=run_ids).order_by()
                   .values_list("run_id").annotate(n=Count("pk")).values_list("run_id", "n"))
    for run_id in run_ids:
        outbox.outbox_put(kind=ABANDON_RUN, key=f"{ABANDON_RUN}:{run_id}:{case.pk}:n{earlier.get(run_id, 0)}",
                          payload={"run_id": run_id, "case_id": case.pk, "reason": redact(reason)[:500]},
                          case=case, run_id=run_id, delay=settings.REVIVE_ABANDON_NOTICE_DELAY_SECONDS)
    return run_ids


def _abandoned_by(run_id: str) -> str | None:
    """The case whose abandonment a run was told (the reference of its ``run.abandoned`` event)."""
    case_pk = (AuditEvent.objects.filter(run_id=run_id, action="run.abandoned").order_by("-occurred_at", "-id")
               .values_list("case_id", flat=True).first())
    return RecoveryCase.objects.filter(pk=case_pk).values_list("reference", flat=True).first() if case_pk else None


@dataclass(frozen=True)
class AbandonClaim:
    """Whether a run may be told its case was abandoned: ``claimed`` (now ``abandoned`` in Revive, by this notice),
    or why not (``reopened``, ``not parked``, ``held``: another open case still holds it, ``gone``)."""

    outcome: str
    case: RecoveryCase | None = None
    detail: str = ""


@transaction.atomic
def run_abandon_claim(*, run_id: str, case_id: int, actor: str, reason: str = "") -> AbandonClaim:
    """Take a parked run out of Revive's hands before its runtime is told that ``case_id`` was abandoned.

    Under the run's and the case's locks (the module's order: run, then case), so a reopen and a claim never
    both succeed: a reopened case is never told, and a run once claimed is ``abandoned`` -- no longer parked,
    so no reopen brings it back. Claiming again (a retried notice) answers ``claimed`` without a second event.
    """
    run = Run.objects.select_for_update(no_key=True).filter(pk=run_id).first()
    if run is None:
        return AbandonClaim("gone")
    case = case_lock(case_id)
    if run.state == Run.State.ABANDONED:
        told_for_us = AuditEvent.objects.filter(run_id=run_id, action="run.abandoned", case_id=case.pk).exists()
        return AbandonClaim("claimed" if told_for_us else "not parked", case)
    if case.state != CaseState.ABANDONED:
        return AbandonClaim("reopened", case)
    if run.state != Run.State.PARKED:
        return AbandonClaim("not parked", case, run.state)
    holder = (CaseRun.objects.filter(run_id=run_id, resumed_at__isnull=True, case__state__in=OPEN_CASE_STATES)
              .exclude(case_id=case.pk).values_list("case__reference", flat=True).first())
    if holder is not None:
        return AbandonClaim("held", case, holder)
    Run.objects.filter(pk=run_id).update(state=Run.State.ABANDONED, updated_at=timezone.now())
    audit_record(actor=actor, action="run.abandoned", entity_type="run", entity_id=run_id, case=case, run_id=run_id,
                 connection_id=case.connection_id, before={"state": Run.State.PARKED},
                 after={"state": Run.State.ABANDONED}, arguments={"reason": reason, "case_id": case.reference})
    return AbandonClaim("claimed", case)


@transaction.atomic
def run_park_again(*, run_id: str, actor: str, reason: str) -> None:
    """A released run waits again: its resume failed (its case is ``resume_failed``; an operator's retry releases it
    with a fresh delivery, and the run coming back by itself proceeds, ``_run_relive``), or a reconciliation held its
    case for approval (``_hold_for_approval``). The caller holds the run's lock (or takes no case lock after this)."""
    if Run.objects.filter(pk=run_id, state=Run.State.ACTIVE).update(state=Run.State.PARKED, resume_claimed_until=None,
                                                                    updated_at=timezone.now()):
        audit_record(actor=actor, action="run.parked", entity_type="run", entity_id=run_id, run_id=run_id,
                     before={"state": Run.State.ACTIVE}, after={"state": Run.State.PARKED}, arguments={"reason": reason})


@transaction.atomic
def case_resume_fail(*, case_id: str | int, actor: str, reason: str, detail: dict[str, Any] | None = None,
                     stopped_run: str | None = None) -> RecoveryCase:
    """The resume of a released case could not be completed (delivery exhausted, a run stalled past its re-drives):
    the case shows ``resume_failed`` with the reason, for an operator. Its runs stay released: a run that comes
    back by itself proceeds (``_run_relive``). Repeating it on a failed case only records the reason.

    ``stopped_run``: a run Revive executes itself (``Run.hosted_at``) stopped after it went past its parked action
    and could not be continued. Nobody else will run the rest of it, so a ``resumed`` case goes back to
    ``resume_failed`` too; the operator's retry continues the run (``_case_release_runs``)."""
    case = case_lock(case_id)
    arguments = {"reason": reason[:1000], **(detail or {})}
    stopped = stopped_run is not None and case.state == CaseState.RESUMED and Run.objects.filter(
        pk=stopped_run, state=Run.State.ACTIVE, hosted_at__isnull=False).exists()
    if case.state == CaseState.RESUMING or stopped:
        return case_transition(case, to=CaseState.RESUME_FAILED, actor=actor, arguments=arguments)
    audit_record(actor=actor, action="case.resume_problem", entity_type="case", entity_id=case.reference, case=case,
                 run_id=case.run_id, connection_id=case.connection_id, arguments=arguments, outcome="error")
    return case


# --------------------------------------------------------------------------- ownership and notes


@transaction.atomic
def case_assign(*, case_id: str | int, assignee, actor: str) -> RecoveryCase:
    """Give ``case`` to an operator (``assignee``, a user holding ``cases.operate_case``) or to nobody (``None``).
    Audited as ``case.assigned`` with who had it before; assigning to the current assignee changes nothing."""
    from revive_site.errors import ValidationFailed

    case = case_lock(case_id)
    if assignee is not None and not assignee.has_perm("cases.operate_case"):
        raise ValidationFailed(f"{assignee.get_username()} is not an operator; only operators take cases.",
                               data={"field": "assignee"})
    if case.assignee_id == getattr(assignee, "pk", None):
        return case
    before = case.assignee.get_username() if case.assignee_id else None
    case.assignee = assignee
    case.save(update_fields=["assignee"])
    after = assignee.get_username() if assignee is not None else None
    audit_record(actor=actor, action="case.assigned", entity_type="case", entity_id=case.reference, case=case,
                 run_id=case.run_id, connection_id=case.connection_id, before={"assignee": before},
                 after={"assignee": after})
    return case


@transaction.atomic
def case_note_add(*, case_id: str | int, body: str, actor: str) -> CaseNote:
    """Append a note to the case's thread; the note is an audit event too (``case.noted``, redacted)."""
    body = _required_text(body, name="note")
    case = case_lock(case_id)
    note = CaseNote.objects.create(case=case, author=actor[:200], body=redact(body))
    audit_record(actor=actor, action="case.noted", entity_type="case", entity_id=case.reference, case=case,
                 run_id=case.run_id, connection_id=case.connection_id, arguments={"note": body, "note_id": note.pk})
    return note


@transaction.atomic
def case_reopen(*, case_id: str | int, actor: str, reason: str) -> RecoveryCase:
    """Undo a reject or abandon while the case's runs are still parked, so a mistaken click strands no run.

    A case whose connection was never re-authorized goes back to ``awaiting_owner`` (resend the owner link from
    there); one re-authorized before it was abandoned or rejected goes to ``awaiting_approval``, so an operator
    decides its resume again. Refused once no run is parked any more, or while another case is open for the same
    connection generation. Repeating it returns the reopened case.

    The abandonment's notices to the runs (``runs_abandon_owe``) wait ``REVIVE_ABANDON_NOTICE_DELAY_SECONDS``: a
    reopen before then cancels them (each notice finds its case reopened and tells nothing). A run already told is
    ``abandoned``, not parked -- it cannot be un-told -- so it neither counts here nor comes back.
    """
    from django.db import IntegrityError

    reason = _required_text(reason, name="reason")
    case = case_lock(case_id)
    if case.state != CaseState.ABANDONED:
        decision = case_last_decision(case)
        if decision is not None and decision.what == "reopened":
            return _decided_elsewhere(case, decision, actor=actor)
        raise _not_allowed(case, "only an abandoned or rejected case can be reopened", to=CaseState.AWAITING_OWNER)
    parked = list(Run.objects.filter(case_runs__case=case, state=Run.State.PARKED).values_list("pk", flat=True))
    if not parked:
        raise CaseTransitionNotAllowed(
            f"Case {case.reference} has no parked run left; there is nothing to reopen it for.",
            data={"case_id": case.reference, "state": case.state})
    reauthorized = case.connection.current_generation > case.rejected_generation
    to = CaseState.AWAITING_APPROVAL if reauthorized else CaseState.AWAITING_OWNER
    try:
        with transaction.atomic():
            case_transition(case, to=to, actor=actor, closed_at=None,
                            arguments={"reopened": True, "reason": reason, "parked_runs": parked})
    except IntegrityError:
        raise CaseTransitionNotAllowed(
            f"Another case is open for {case.connection_id} generation {case.rejected_generation}; "
            f"{case.reference} stays abandoned.", data={"case_id": case.reference, "state": CaseState.ABANDONED})
    return case
