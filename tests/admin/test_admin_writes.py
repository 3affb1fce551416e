"""The console's writes to a connection's identity and an API key's access: only through a form with a reason that
calls a service and leaves exactly one audit event with before and after."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import services
from cases.models import ApiKey, Connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def conn(make_connection):
    return make_connection(
        "conn_identity",
        provider="auth0",
        provider_subject="auth0|ada",
        provider_tenant="",
        provider_issuer="https://t.example/",
        owner_email="ada@contoso.example",
    )


def test_a_superuser_changes_a_connections_identity_through_the_reason_form(admin_client, admin_user, conn):
    page = admin_client.get(f"/admin/cases/connection/{conn.pk}/change/").content.decode()
    assert f"/admin/cases/connection/{conn.pk}/identity/" in page  # the change page links to the form
    resp = admin_client.post(
        f"/admin/cases/connection/{conn.pk}/identity/",
        {
            "provider_subject": "auth0|ada-2",
            "provider_tenant": "",
            "provider_issuer": "https://t.example/",
            "provider_org": "org_acme",
            "owner_email": "ada@contoso.example",
            "reason": "INC-7 account migrated",
        },
    )
    assert resp.status_code == 302, resp.content.decode()[:2000]
    conn.refresh_from_db()
    assert (conn.provider_subject, conn.provider_org) == ("auth0|ada-2", "org_acme")
    event = AuditEvent.objects.get(action="connection.identity_changed")
    assert event.actor == f"operator:{admin_user.get_username()}" and event.connection_id == conn.pk
    assert event.before == {"provider_subject": "auth0|ada", "provider_org": ""}
    assert event.after == {"provider_subject": "auth0|ada-2", "provider_org": "org_acme"}
    assert event.arguments == {"reason": "INC-7 account migrated"}


def test_without_a_reason_nothing_changes(admin_client, conn):
    resp = admin_client.post(
        f"/admin/cases/connection/{conn.pk}/identity/",
        {
            "provider_subject": "someone-else",
            "provider_issuer": "https://t.example/",
            "owner_email": "x@example.com",
            "reason": "  ",
        },
    )
    assert resp.status_code == 200 and "This field is required" in resp.content.decode()
    assert Connection.objects.get(pk=conn.pk).provider_subject == "auth0|ada"
    assert not AuditEvent.objects.filter(action="connection.identity_changed").exists()


def test_the_plain_change_form_writes_no_identity_field(admin_client, conn):
    admin_client.post(
        f"/admin/cases/connection/{conn.pk}/change/",
        {
            "provider_subject": "forged",
            "owner_email": "mallory@example.com",
            "provider_tenant": "t",
            "provider": "entra",
            "id": conn.pk,
            "display_name": "x",
            "owner_name": "y",
            "_save": "Save",
        },
    )
    fresh = Connection.objects.get(pk=conn.pk)
    assert (fresh.provider_subject, fresh.owner_email, fresh.provider) == ("auth0|ada", "ada@contoso.example", "auth0")
    assert admin_client.get("/admin/cases/connection/add/").status_code == 403


def test_a_superuser_raises_a_key_to_operator_only_with_a_reason_and_it_is_audited(admin_client, admin_user):
    key, _ = services.api_key_create(name="fleet-a")
    admin_client.post(
        f"/admin/cases/apikey/{key.pk}/change/",
        {"name": "fleet-a", "role": "operator", "system_operate": "on", "_save": "Save"},
    )
    assert (ApiKey.objects.get(pk=key.pk).role, ApiKey.objects.get(pk=key.pk).system_operate) == ("worker", False)
    from cases.namespaces import namespace_ensure

    namespace_ensure(name="beta", actor="t")
    resp = admin_client.post(
        f"/admin/cases/apikey/{key.pk}/access/",
        {"role": "operator", "system_operate": "on", "namespace": "beta", "reason": "CHG-12 platform automation"},
    )
    assert resp.status_code == 302, resp.content.decode()[:3000]
    key.refresh_from_db()
    assert (key.role, key.system_operate, key.namespace_id) == ("operator", True, "beta")
    event = AuditEvent.objects.get(action="api_key.access_changed")
    assert event.before == {"name": "fleet-a", "role": "worker", "system_operate": False, "namespace": "default"}
    assert event.after == {"name": "fleet-a", "role": "operator", "system_operate": True, "namespace": "beta"}
    assert event.arguments == {"reason": "CHG-12 platform automation"} and "key_hash" not in str(event.after)


def test_staff_without_the_change_permission_cannot_use_the_forms(client, conn, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw-viewer-1234", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_connection", "view_apikey"]))
    client.force_login(user)
    key, _ = services.api_key_create(name="fleet-v")
    assert client.post(f"/admin/cases/connection/{conn.pk}/identity/", {"reason": "x"}).status_code == 403
    assert client.post(f"/admin/cases/apikey/{key.pk}/access/", {"role": "operator", "reason": "x"}).status_code == 403
    assert not AuditEvent.objects.filter(action__in=["connection.identity_changed", "api_key.access_changed"]).exists()


def test_the_admin_revokes_keys_through_the_service(admin_client):
    key, _ = services.api_key_create(name="fleet-r")
    admin_client.post("/admin/cases/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert AuditEvent.objects.filter(action="api_key.revoked", entity_id=str(key.pk)).count() == 1
