"""The console's writes to what identifies a connection and what an API key may do, and to a namespace's settings.

A connection's recorded identity (subject, tenant, issuer, organization) and owner e-mail are what every
reconnect is checked against; an API key's role and *system operate* permission (and its namespace) decide what
it reaches. Each change here requires a reason, is one transaction under the row's lock, and writes exactly one
audit event with the changed fields before and after (identifiers only, never a secret). Nothing else writes
them after creation: the admin shows them read-only and links to the forms that call these services. A namespace's
console users and notification targets are changed by superusers on the namespace's admin page (no reason asked),
each change audited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.db import transaction

from audit.services import audit_record
from cases.errors import ConnectionNotFound
from cases.models import ApiKey, Connection, Namespace, email_list_split
from cases.services import api_key_forget
from revive_site.errors import ValidationFailed

CONNECTION_IDENTITY_FIELDS = ("provider_subject", "provider_tenant", "provider_issuer", "provider_org", "owner_email")
API_KEY_ACCESS_FIELDS = ("role", "system_operate", "namespace_id")


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise ValidationFailed("A reason is required.", data={"field": "reason"})
    return text[:2000]


def _changes(obj: Any, fields: tuple[str, ...], values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = set(values) - set(fields)
    if unknown:
        raise ValidationFailed(f"Not changeable here: {', '.join(sorted(unknown))}.", data={"fields": sorted(unknown)})
    before = {f: getattr(obj, f) for f in fields if f in values and getattr(obj, f) != values[f]}
    after = {f: values[f] for f in before}
    return before, after


@transaction.atomic
def connection_identity_change(*, connection_id: str, actor: str, reason: str, **values: Any) -> Connection:
    """Change a connection's recorded identity or owner e-mail; a call that changes nothing writes nothing."""
    reason = _reason(reason)
    conn = Connection.objects.select_for_update().filter(pk=connection_id).first()
    if conn is None:
        raise ConnectionNotFound(data={"connection_id": connection_id})
    before, after = _changes(conn, CONNECTION_IDENTITY_FIELDS, values)
    if not after:
        return conn
    for name, value in after.items():
        setattr(conn, name, value)
    conn.save(update_fields=[*after, "updated_at"])
    audit_record(
        actor=actor,
        action="connection.identity_changed",
        entity_type="connection",
        entity_id=conn.pk,
        connection_id=conn.pk,
        before=before,
        after=after,
        arguments={"reason": reason},
    )
    return conn


@transaction.atomic
def api_key_access_change(*, key_id: int, actor: str, reason: str, **values: Any) -> ApiKey:
    """Change what an API key may do and where: role, *system operate*, namespace (a name or a ``Namespace``).

    A call that changes nothing writes nothing.
    """
    reason = _reason(reason)
    if "namespace" in values:
        namespace = values.pop("namespace")
        values["namespace_id"] = getattr(namespace, "pk", namespace)
        if not Namespace.objects.filter(pk=values["namespace_id"]).exists():
            raise ValidationFailed("No such namespace.", data={"field": "namespace"})
    key = ApiKey.objects.select_for_update().get(pk=key_id)
    before, after = _changes(key, API_KEY_ACCESS_FIELDS, values)
    if not after:
        return key
    for name, value in after.items():
        setattr(key, name, value)
    key.save(update_fields=list(after))
    api_key_forget()  # the cached key carries its role and namespace
    names = {"namespace_id": "namespace"}
    audit_record(
        actor=actor,
        action="api_key.access_changed",
        entity_type="api_key",
        entity_id=str(key.pk),
        before={"name": key.name, **{names.get(k, k): v for k, v in before.items()}},
        after={"name": key.name, **{names.get(k, k): v for k, v in after.items()}},
        arguments={"reason": reason},
    )
    return key


# --------------------------------------------------------------------------- namespaces


@transaction.atomic
def namespace_operators_set(*, name: str, users: list, actor: str) -> None:
    """Limit exactly ``users`` to this namespace in the console (each may be limited to others too); audited."""
    namespace = Namespace.objects.select_for_update().get(pk=name)
    before = sorted(namespace.operators.values_list("username", flat=True))
    namespace.operators.set(users)
    after = sorted(u.get_username() for u in users)
    if before != after:
        audit_record(
            actor=actor,
            action="namespace.operators_changed",
            entity_type="namespace",
            entity_id=name,
            before={"operators": before},
            after={"operators": after},
        )


@transaction.atomic
def namespace_notifications_set(*, name: str, operator_emails: str, operator_webhook_url: str, actor: str) -> Namespace:
    """Where this namespace's operator notifications go (blank: the global settings); audited. Only the webhook URL's
    host is written to the audit log: a webhook URL may carry a token of its own."""
    namespace = Namespace.objects.select_for_update().get(pk=name)
    emails = ", ".join(email_list_split(operator_emails))
    url = (operator_webhook_url or "").strip()
    before = {
        "operator_emails": namespace.operator_emails,
        "webhook_host": urlsplit(namespace.operator_webhook_url).hostname or "",
    }
    if (namespace.operator_emails, namespace.operator_webhook_url) == (emails, url):
        return namespace
    namespace.operator_emails, namespace.operator_webhook_url = emails, url
    namespace.save(update_fields=["operator_emails", "operator_webhook_url"])
    audit_record(
        actor=actor,
        action="namespace.notifications_changed",
        entity_type="namespace",
        entity_id=name,
        before=before,
        after={"operator_emails": emails, "webhook_host": urlsplit(url).hostname or ""},
    )
    return namespace
