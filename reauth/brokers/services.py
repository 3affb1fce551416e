"""Every write for broker-held connections: signals from the broker, and the reconnect it ends.

A broker signal is recorded once (``BrokerSignal``, keyed by the digest of what was received) in the same
transaction as its effect, so a retried or duplicated delivery has one effect:

* refresh failed, dead grant or interaction required → ``cases.services.case_open_from_signal``: the current
  generation is rejected and a case opened before any worker hits it (the next ``begin`` parks);
* refresh failed, transient or unknown → the connection's timeline only;
* refresh succeeded while that case still waits and nobody reconnected → ``case_recover_without_reconnect``;
* re-authorized (Nango ``override``, Scalekit ``ACTIVE`` again) → an outbox step (``BROKER_SIGNAL``) proves the identity from what the
  broker now holds (``identity``) and settles the owner's reconnect request through the one completion every
  reconnect uses (``reauth.services.reconnect_request_complete``). A mismatch is refused exactly like a direct
  sign-in; the broker then holds the wrong account's grant, so the generation stays rejected and the
  connection blocked until the expected account reconnects.

No network call is made inside a transaction.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.redaction import redact
from audit.services import audit_record
from cases.models import DEFAULT_NAMESPACE, CaseState, Connection, Namespace, RecoveryCase
from cases.outbox import outbox_put
from cases.services import case_open_from_signal, case_recover_without_reconnect
from classifier import FailureClass, Provider, classify
from revive_site.errors import NotFound, ValidationFailed

from .. import services as reconnect
from ..custody import secret_open, secret_seal
from ..errors import ReconnectError
from ..models import BrokerSignal, NangoSigningKey, ReconnectRequest
from . import BrokerError, identity, nango, scalekit

logger = logging.getLogger(__name__)
NANGO_ACTOR = "broker:nango"
OWNER_CLASSES = (FailureClass.DEAD_GRANT, FailureClass.INTERACTION_REQUIRED)
_NANGO_FIELDS = (
    "from",
    "type",
    "operation",
    "connectionId",
    "providerConfigKey",
    "provider",
    "environment",
    "authMode",
    "success",
)


@dataclass(frozen=True)
class Receipt:
    signal_id: int
    duplicate: bool
    state: str
    outcome: str


def digest_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def nango_signing_key(namespace: str) -> str | None:
    """The webhook signing key of a namespace (``""``: none); ``None`` for a namespace that does not exist.

    In order: the key set for the namespace in the console (``NangoSigningKey``), the namespace's entry in
    ``REVIVE_NANGO_WEBHOOK_SIGNING_KEYS``, and for ``default`` only ``REVIVE_NANGO_WEBHOOK_SIGNING_KEY``. A stored
    key that ``SECRET_KEY`` and its fallbacks cannot decrypt refuses every delivery rather than fall back to the
    environment's key, which the console's key was set to replace.
    """
    stored = NangoSigningKey.objects.filter(namespace_id=namespace).first()
    if stored is None and not Namespace.objects.filter(name=namespace).exists():
        return None
    if stored is not None and stored.is_set:
        key = secret_open(stored.ciphertext)
        if key is None:
            logger.error(
                "The Nango webhook signing key of namespace %s cannot be decrypted (SECRET_KEY changed "
                "without SECRET_KEY_FALLBACKS?): set it again in the console",
                namespace,
            )
            return ""
        return key
    keys = settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEYS
    if keys.get(namespace):
        return keys[namespace]
    return settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEY if namespace == DEFAULT_NAMESPACE else ""


_SIGNING_KEY_MAX = 500


@transaction.atomic
def nango_signing_key_set(*, namespace: str, key: str, actor: str) -> NangoSigningKey:
    """Set or replace a namespace's Nango webhook signing key, encrypted at rest; one audit event, never the key.

    Setting the key it already has changes nothing and records nothing.
    """
    key = (key or "").strip()
    if not key or len(key) > _SIGNING_KEY_MAX:
        raise ValidationFailed(
            f"A Nango webhook signing key is 1-{_SIGNING_KEY_MAX} characters.", data={"field": "signing_key"}
        )
    stored = _signing_key_lock(namespace)
    if stored is not None and stored.is_set and secret_open(stored.ciphertext) == key:
        return stored
    operation = "replaced" if stored is not None and stored.is_set else "set"
    stored, _ = NangoSigningKey.objects.update_or_create(
        namespace_id=namespace,
        defaults={"ciphertext": secret_seal(key), "changed_at": timezone.now(), "changed_by": actor},
    )
    _signing_key_audit(namespace, operation=operation, actor=actor)
    return stored


@transaction.atomic
def nango_signing_key_clear(*, namespace: str, actor: str) -> NangoSigningKey | None:
    """Clear a namespace's console key: its webhooks are checked against the environment's keys again. Audited once;
    clearing a key that is not set changes nothing."""
    stored = _signing_key_lock(namespace)
    if stored is None or not stored.is_set:
        return stored
    stored.ciphertext, stored.changed_at, stored.changed_by = "", timezone.now(), actor
    stored.save(update_fields=["ciphertext", "changed_at", "changed_by"])
    _signing_key_audit(namespace, operation="cleared", actor=actor)
    return stored


def _signing_key_lock(namespace: str) -> NangoSigningKey | None:
    """Lock the namespace (two console users changing its key at once take turns) and read its stored key."""
    if not Namespace.objects.select_for_update().filter(name=namespace).exists():
        raise NotFound("No namespace with this name exists.", data={"namespace": namespace[:64]})
    return NangoSigningKey.objects.filter(namespace_id=namespace).first()


def _signing_key_audit(namespace: str, *, operation: str, actor: str) -> None:
    audit_record(
        actor=actor,
        action="namespace.nango_signing_key_changed",
        entity_type="namespace",
        entity_id=namespace,
        arguments={"operation": operation},
    )


def _kept(payload: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a delivery: its identifying fields and the error's type and description, redacted."""
    kept = {k: payload[k] for k in _NANGO_FIELDS if k in payload and isinstance(payload[k], (str, bool, int))}
    error = payload.get("error")
    if isinstance(error, dict):
        kept["error"] = redact(
            {"type": str(error.get("type", ""))[:80], "description": str(error.get("description", ""))[:500]}
        )
    return kept


def _audit(
    signal: BrokerSignal,
    conn: Connection,
    *,
    outcome: str,
    case: RecoveryCase | None = None,
    extra: dict[str, Any] | None = None,
    result: str = "ok",
) -> None:
    audit_record(
        actor=f"broker:{signal.source}",
        action="broker.signal",
        entity_type="connection",
        entity_id=conn.pk,
        connection_id=conn.pk,
        case=case,
        run_id=(case.run_id or "") if case else "",
        arguments={"signal": signal.pk, "kind": signal.kind, "outcome": outcome, **(extra or {})},
        outcome=result,
    )


def _finish(signal: BrokerSignal, *, state: str, outcome: str) -> None:
    signal.state, signal.outcome = state, outcome[:60]
    signal.processed_at = timezone.now() if state != BrokerSignal.State.PENDING else None
    signal.save(update_fields=["state", "outcome", "processed_at"])


# --------------------------------------------------------------------------- Nango webhooks


@transaction.atomic
def nango_webhook_receive(*, namespace: str, raw: bytes, payload: dict[str, Any]) -> Receipt:
    """Record a verified Nango webhook once and apply what it means (see the module docstring)."""
    body_digest = digest_of(raw)
    kind = f"{payload.get('type', '')}.{payload.get('operation', '')}"[:60]
    conn = None
    if payload.get("type") == "auth":
        conn = Connection.objects.filter(
            namespace_id=namespace,
            provider=Provider.NANGO,
            broker_integration=str(payload.get("providerConfigKey", "")),
            broker_connection=str(payload.get("connectionId", "")),
        ).first()
    if conn is not None:
        conn = Connection.objects.select_for_update().get(pk=conn.pk)  # one delivery per connection at a time
    digest = digest_of(f"{body_digest}:{_delivery_context(conn, body_digest, payload)}".encode())
    existing = BrokerSignal.objects.filter(source="nango", namespace=namespace, digest=digest).first()
    if existing is not None:
        return Receipt(existing.pk, True, existing.state, existing.outcome)
    try:
        with transaction.atomic():
            signal = BrokerSignal.objects.create(
                source="nango",
                namespace=namespace,
                digest=digest,
                body_digest=body_digest,
                kind=kind,
                connection=conn,
                payload=_kept(payload),
            )
    except IntegrityError:  # the same delivery, concurrently: the other one applies it
        existing = BrokerSignal.objects.get(source="nango", namespace=namespace, digest=digest)
        return Receipt(existing.pk, True, existing.state, existing.outcome)
    if payload.get("type") != "auth":
        _finish(signal, state=BrokerSignal.State.IGNORED, outcome="type_not_handled")
    elif conn is None:
        _finish(signal, state=BrokerSignal.State.IGNORED, outcome="connection_not_registered")
    else:
        _nango_auth(signal, conn, payload)
    return Receipt(signal.pk, False, signal.state, signal.outcome)


def _delivery_context(conn: Connection | None, body_digest: str, payload: dict[str, Any]) -> str:
    """Where the connection stood: what tells a retried delivery from a new event with the same body."""
    if conn is None:
        return ""
    if payload.get("operation") == "override":
        from audit.models import AuditEvent

        attempt = (
            AuditEvent.objects.filter(connection_id=conn.pk, action="reconnect.sign_in_started")
            .order_by("-pk")
            .values_list("pk", flat=True)
            .first()
        )
        return f"{conn.current_generation}:attempt:{attempt or 0}"
    last_other = (
        BrokerSignal.objects.filter(source="nango", connection=conn)
        .exclude(body_digest=body_digest)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    return f"{conn.current_generation}:after:{last_other or 0}"


def _nango_auth(signal: BrokerSignal, conn: Connection, payload: dict[str, Any]) -> None:
    operation, success = payload.get("operation"), payload.get("success") is True
    if operation == "refresh" and not success:
        _refresh_failed(signal, conn, payload)
    elif operation == "refresh":
        _refresh_recovered(signal, conn)
    elif operation == "override" and success:
        _finish(signal, state=BrokerSignal.State.PENDING, outcome="identity_proof_pending")
        _audit(signal, conn, outcome="identity_proof_pending")
        _enqueue(signal.pk)
    else:
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome="recorded")
        _audit(signal, conn, outcome="recorded", extra={"success": success})


def _refresh_failed(signal: BrokerSignal, conn: Connection, payload: dict[str, Any]) -> None:
    c = classify(provider=Provider.NANGO, status=None, body=payload)
    extra = {"code": c.code, "failure_class": str(c.failure_class), "classification": c.signature}
    if c.failure_class in OWNER_CLASSES:
        case, opened = case_open_from_signal(
            connection_id=conn.pk,
            classification=c,
            actor=NANGO_ACTOR,
            signal={"source": "nango", "signal": signal.pk, "kind": signal.kind},
        )
        outcome = "case_opened" if opened else "case_already_open"
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome=outcome)
        _audit(signal, conn, outcome=outcome, case=case, extra=extra)
    else:  # transient or unknown: Nango keeps retrying; a worker that hits it gets its own answer
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome="recorded")
        _audit(signal, conn, outcome="recorded", extra=extra)


def _refresh_recovered(signal: BrokerSignal, conn: Connection) -> None:
    case = RecoveryCase.objects.filter(
        connection=conn,
        rejected_generation=conn.current_generation,
        state__in=(CaseState.OPENED, CaseState.AWAITING_OWNER),
    ).first()
    if case is None:
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome="recorded")
        _audit(signal, conn, outcome="recorded", extra={"success": True})
        return
    case = case_recover_without_reconnect(
        case_id=case.pk, actor=NANGO_ACTOR, evidence={"signal": signal.pk, "kind": signal.kind}
    )
    if case.state in (CaseState.CLOSED, CaseState.REAUTHORIZED):
        reconnect.reconnect_requests_revoke_for_case(case=case, reason="recovered_by_provider", actor=NANGO_ACTOR)
    outcome = "case_recovered" if case.state in (CaseState.CLOSED, CaseState.REAUTHORIZED) else "recorded"
    _finish(signal, state=BrokerSignal.State.PROCESSED, outcome=outcome)
    _audit(signal, conn, outcome=outcome, case=case, extra={"success": True})


BROKER_SIGNAL = "reauth.broker_signal"


def _enqueue(signal_id: int) -> None:
    """Owe the identity proof of a re-authorization: an outbox row in the signal's transaction
    (``reauth.handlers`` runs ``broker_reauthorized``, retried with backoff, then ``broker_signal_give_up``)."""
    outbox_put(kind=BROKER_SIGNAL, key=f"{BROKER_SIGNAL}:{signal_id}", payload={"signal_id": signal_id})


# --------------------------------------------------------------------------- the re-authorization


class ProofUnavailable(Exception):
    """The broker or the issuer could not be asked: the outbox step retries."""


def _credentials(conn: Connection) -> dict[str, Any]:
    """What the broker holds for the connection now; ``{}`` (proves nobody) if the broker refuses to say."""
    try:
        if conn.provider == Provider.NANGO:
            return nango.connection_credentials(
                integration_id=conn.broker_integration, connection_id=conn.broker_connection
            )
        return scalekit.account_credentials(conn)
    except BrokerError as exc:
        if exc.transient:
            raise ProofUnavailable(str(exc)) from None
        return {}


def broker_reauthorized(*, signal_id: int) -> str:
    """Prove who the broker now holds a grant for, then settle the owner's request with it; safe to repeat.

    Raises ``ProofUnavailable`` (the outbox step retries) when the broker or the issuer cannot be reached.
    """
    signal = BrokerSignal.objects.select_related("connection").filter(pk=signal_id).first()
    if signal is None or signal.state != BrokerSignal.State.PENDING or signal.connection is None:
        return signal.outcome if signal else "missing"
    conn = signal.connection
    req = (
        ReconnectRequest.objects.filter(
            connection=conn, state=ReconnectRequest.State.ACTIVE, rejected_generation=conn.current_generation
        )
        .order_by("-created_at")
        .first()
    )
    if req is None:
        with transaction.atomic():
            _finish(signal, state=BrokerSignal.State.PROCESSED, outcome="no_reconnect_waiting")
            _audit(signal, conn, outcome="no_reconnect_waiting")
        return "no_reconnect_waiting"
    try:
        presented, how = identity.identity_from_credentials(conn, _credentials(conn))
    except identity.IdentityUnavailable as exc:
        raise ProofUnavailable(str(exc)) from None
    proof = {"proof": how, "custody": conn.get_provider_display(), "signal": signal.pk}
    actor = f"owner:{presented.label or presented.subject or 'unknown'}"[:200]
    try:
        completion = reconnect.reconnect_request_complete(
            public_id=req.public_id, presented=presented, grant=None, actor=actor, proof=proof
        )
        outcome = "reconnected" if completion.consumed else "identity_refused"
    except ReconnectError as exc:  # the link expired, was revoked or locked meanwhile
        outcome = exc.code.lower()[:60]
    with transaction.atomic():
        signal = BrokerSignal.objects.select_for_update().get(pk=signal_id)
        if signal.state == BrokerSignal.State.PENDING:
            _finish(signal, state=BrokerSignal.State.PROCESSED, outcome=outcome)
    return outcome


def broker_signal_give_up(*, signal_id: int, error: str) -> None:
    """Retries are exhausted: the signal is ``failed`` and on the connection's timeline for an operator."""
    with transaction.atomic():
        signal = BrokerSignal.objects.select_for_update(of=("self",)).select_related("connection").get(pk=signal_id)
        if signal.state != BrokerSignal.State.PENDING:
            return
        _finish(signal, state=BrokerSignal.State.FAILED, outcome="proof_unavailable")
        if signal.connection is not None:
            _audit(signal, signal.connection, outcome="proof_unavailable", extra={"error": error[:200]}, result="error")


# --------------------------------------------------------------------------- Scalekit account status


@transaction.atomic
def scalekit_status_observed(*, connection_id: str, status: str, account: dict[str, Any]) -> bool:
    """Act once on a change of a Scalekit connected account's status; answer whether it was a change.

    Not ``ACTIVE`` → classified like a dead grant, the case opened proactively. ``ACTIVE`` again while the owner's
    request waits → the identity proof (Celery), then the usual completion.
    """
    conn = Connection.objects.select_for_update().get(pk=connection_id)
    last = BrokerSignal.objects.filter(source="scalekit", connection=conn).order_by("-pk").first()
    waiting_request = ReconnectRequest.objects.filter(
        connection=conn, state=ReconnectRequest.State.ACTIVE, rejected_generation=conn.current_generation
    ).exists()
    updated = str(account.get("updated_at") or "")
    # A new grant for an account that stayed ACTIVE (the owner reconnected again after a refusal) shows as a new
    # ``updated_at``; it matters only while the owner's request waits.
    reauthorized = (
        status == "ACTIVE"
        and waiting_request
        and (last is None or last.kind != status or last.payload.get("updated_at") != updated)
    )
    if last is not None and last.kind == status and not reauthorized:
        return False
    marker = f"{conn.pk}:{conn.current_generation}:{last.pk if last else 0}:{status}:{updated}"
    digest = hashlib.sha256(marker.encode()).hexdigest()
    try:
        with transaction.atomic():
            signal = BrokerSignal.objects.create(
                source="scalekit", digest=digest, kind=status[:60] or "UNKNOWN", connection=conn, payload=account
            )
    except IntegrityError:
        return False
    if status != "ACTIVE":
        c = classify(provider=Provider.SCALEKIT, status=None, body={"connected_account": {"status": status}})
        case, opened = case_open_from_signal(
            connection_id=conn.pk,
            classification=c,
            actor="broker:scalekit",
            signal={"source": "scalekit", "signal": signal.pk, "kind": status},
        )
        outcome = "case_opened" if opened else ("case_already_open" if case else "recorded")
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome=outcome)
        _audit(signal, conn, outcome=outcome, case=case, extra={"code": c.code, "failure_class": str(c.failure_class)})
        return True
    if not waiting_request:
        _finish(signal, state=BrokerSignal.State.PROCESSED, outcome="recorded")
        _audit(signal, conn, outcome="recorded")
        return True
    _finish(signal, state=BrokerSignal.State.PENDING, outcome="identity_proof_pending")
    _audit(signal, conn, outcome="identity_proof_pending")
    _enqueue(signal.pk)
    return True


# --------------------------------------------------------------------------- polling


@dataclass
class PollReport:
    checked: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def scalekit_accounts_poll(*, limit: int | None = None) -> PollReport:
    """Read the status of the registered Scalekit connections that are due; record a change once and act on it.

    Bounded: at most ``REVIVE_SCALEKIT_POLL_BATCH`` accounts per run, the longest-waiting first, so every account
    gets its turn. An account whose read failed waits 2^n minutes (capped at an hour) before its next turn, so one
    broken account cannot hold the rest.
    """
    report = PollReport()
    if not scalekit.configured():
        return report
    now = timezone.now()
    due = (
        Connection.objects.filter(provider=Provider.SCALEKIT)
        .filter(Q(broker_next_check_at__isnull=True) | Q(broker_next_check_at__lte=now))
        .order_by(F("broker_next_check_at").asc(nulls_first=True), "pk")
    )
    for conn in due[: limit or settings.REVIVE_SCALEKIT_POLL_BATCH]:
        try:
            account = scalekit.account_read(conn)
        except scalekit.ScalekitError as exc:
            failures = conn.broker_check_failures + 1
            Connection.objects.filter(pk=conn.pk).update(
                broker_check_failures=failures,
                broker_next_check_at=timezone.now() + timedelta(minutes=min(60, 2**failures)),
            )
            report.errors.append(f"{conn.pk}: {exc.code or exc.status}")
            continue
        Connection.objects.filter(pk=conn.pk).update(broker_check_failures=0, broker_next_check_at=timezone.now())
        report.checked.append(conn.pk)
        status = str(account.get("status") or "").upper()
        if scalekit_status_observed(
            connection_id=conn.pk,
            status=status,
            account={"id": account.get("id"), "status": status, "updated_at": account.get("updated_at")},
        ):
            report.changed.append(conn.pk)
    return report
