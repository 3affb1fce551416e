"""Connections and their credential generations: registering a connection, reading its lease, advancing it."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record

from ..errors import ConnectionConflict, ConnectionInvalid, ConnectionNotFound, LeaseFenced
from ..models import (
    BLOCKING_CASE_STATES,
    BROKER_PROVIDERS,
    DEFAULT_NAMESPACE,
    UPSTREAM_PROVIDERS,
    Connection,
    CredentialGeneration,
    RecoveryCase,
)
from .common import SYSTEM, _lock_connection


def connection_broker_check(
    *,
    provider: str,
    upstream_provider: str = "",
    broker_integration: str = "",
    broker_connection: str = "",
    broker_account: str = "",
) -> None:
    """A broker-held connection names its upstream provider and the broker's references; any other names none.

    Shared by ``connection_create`` and the admin form, so both refuse the same shapes.
    """
    problems: dict[str, str] = {}
    refs = {
        "broker_integration": broker_integration,
        "broker_connection": broker_connection,
        "broker_account": broker_account,
    }
    if provider in BROKER_PROVIDERS:
        if upstream_provider not in UPSTREAM_PROVIDERS:
            problems["upstream_provider"] = (
                f"required for {provider}: one of {', '.join(p.value for p in UPSTREAM_PROVIDERS)}"
            )
        if provider == "nango":
            for name in ("broker_integration", "broker_connection"):
                if not refs[name]:
                    problems[name] = "required for nango (integration id and connection id)"
            if broker_account:
                problems["broker_account"] = "scalekit only"
        elif not broker_integration or not (broker_connection or broker_account):
            problems["broker_integration"] = (
                "required for scalekit: the connector, and the identifier or the connected-account id"
            )
    else:
        if upstream_provider:
            problems["upstream_provider"] = "only for broker-held connections (nango, scalekit)"
        problems.update(
            {name: "only for broker-held connections (nango, scalekit)" for name, value in refs.items() if value}
        )
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
    connection_broker_check(
        provider=provider,
        upstream_provider=upstream_provider,
        broker_integration=broker_integration,
        broker_connection=broker_connection,
        broker_account=broker_account,
    )
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
        after={
            "provider": provider,
            "generation": 1,
            "subject": provider_subject,
            "tenant": provider_tenant,
            **(
                {
                    "upstream_provider": upstream_provider,
                    "broker_integration": broker_integration,
                    "broker_connection": broker_connection,
                    "broker_account": broker_account,
                }
                if conn.broker_held
                else {}
            ),
        },
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
        RecoveryCase.objects.filter(
            connection=conn, rejected_generation=conn.current_generation, state__in=BLOCKING_CASE_STATES
        )
        .only("reference")
        .first()
    )
    return Lease(
        connection_id=conn.pk,
        generation=conn.current_generation,
        usable=case is None,
        case_reference=case.reference if case else None,
    )


@transaction.atomic
def lease_advance(*, connection_id: str, from_generation: int, actor: str, case: RecoveryCase | None = None) -> int:
    """Advance the connection's generation by exactly one; repeating the call for the same ``from_generation`` is a no-op.

    Every worker still holding ``from_generation`` is fenced from this commit on: the advance is an UPDATE of the
    connection's row conditioned on ``from_generation``, which holds the row until the commit (a begin's
    ``FOR SHARE`` waits for it) -- the lock and the check in one statement.
    """
    return _lease_advance(connection_id=connection_id, from_generation=from_generation, actor=actor, case=case)


def _lease_advance(*, connection_id: str, from_generation: int, actor: str, case: RecoveryCase | None) -> int:
    """``lease_advance`` in the caller's transaction (no savepoint of its own)."""
    now = timezone.now()
    new = from_generation + 1
    advanced = Connection.objects.filter(pk=connection_id, current_generation=from_generation).update(
        current_generation=new, updated_at=now
    )
    if not advanced:
        conn = _lock_connection(connection_id, exclusive=True)
        if conn.current_generation == new:
            return new  # already advanced by this same step
        raise LeaseFenced(
            "The generation to advance from is not the current one.",
            data={
                "connection_id": connection_id,
                "from_generation": from_generation,
                "current_generation": conn.current_generation,
            },
        )
    # The old generation superseded and the new one issued, in one statement.
    CredentialGeneration.objects.bulk_create(
        [
            CredentialGeneration(
                connection_id=connection_id,
                number=from_generation,
                state=CredentialGeneration.State.SUPERSEDED,
                superseded_at=now,
            ),
            CredentialGeneration(connection_id=connection_id, number=new),
        ],
        update_conflicts=True,
        unique_fields=["connection", "number"],
        update_fields=["state", "superseded_at"],
    )
    audit_record(
        actor=actor,
        action="lease.advanced",
        entity_type="connection",
        entity_id=connection_id,
        connection_id=connection_id,
        case=case,
        before={"generation": from_generation},
        after={"generation": new},
    )
    return new
