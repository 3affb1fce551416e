"""Registering broker-held connections: the service and ``revive_connection`` accept them and refuse half-filled
ones with a clear error; the admin shows their references and changes their identity by the upstream's rule."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from cases import services
from cases.errors import ConnectionInvalid
from cases.models import Connection, CredentialGeneration

pytestmark = pytest.mark.django_db

IDENTITY = dict(owner_email="ada@contoso.example", provider_subject="b1e2c3d4", provider_tenant="3f6b1c2e")


def test_a_nango_and_a_scalekit_connection_are_registered_with_their_references():
    nango = services.connection_create(
        connection_id="c_nango",
        provider="nango",
        upstream_provider="entra",
        broker_integration="microsoft",
        broker_connection="nc-1",
        **IDENTITY,
    )
    scalekit = services.connection_create(
        connection_id="c_sk",
        provider="scalekit",
        upstream_provider="oidc",
        provider_issuer="https://accounts.google.com",
        broker_integration="gmail",
        broker_connection="user-42",
        broker_account="ca_123",
        **IDENTITY,
    )
    assert nango.broker_held and nango.identity_provider == "entra"
    assert scalekit.broker_held and scalekit.identity_provider == "oidc"
    assert CredentialGeneration.objects.filter(connection__in=[nango, scalekit], number=1).count() == 2
    created = AuditEvent.objects.get(action="connection.created", connection_id="c_nango")
    assert created.after["broker_connection"] == "nc-1" and created.after["upstream_provider"] == "entra"


@pytest.mark.parametrize(
    "fields, bad",
    [
        (dict(provider="nango", upstream_provider="entra", broker_integration="microsoft"), "broker_connection"),
        (dict(provider="nango", broker_integration="microsoft", broker_connection="x"), "upstream_provider"),
        (
            dict(provider="nango", upstream_provider="nango", broker_integration="m", broker_connection="x"),
            "upstream_provider",
        ),
        (dict(provider="scalekit", upstream_provider="oidc", broker_connection="x"), "broker_integration"),
        (dict(provider="entra", broker_connection="x"), "broker_connection"),
        (dict(provider="entra", upstream_provider="oidc"), "upstream_provider"),
    ],
)
def test_half_filled_broker_references_are_refused(fields, bad):
    with pytest.raises(ConnectionInvalid) as caught:
        services.connection_create(connection_id="c_bad", **IDENTITY, **fields)
    assert bad in caught.value.data["fields"]
    assert caught.value.status == 422 and caught.value.code == "CONNECTION_INVALID"
    assert not Connection.objects.filter(pk="c_bad").exists()


def test_revive_connection_registers_a_nango_connection(capsys):
    call_command(
        "revive_connection",
        "c_cli",
        "--provider",
        "nango",
        "--owner-email",
        "ada@contoso.example",
        "--subject",
        "sub-1",
        "--issuer",
        "https://issuer.example",
        "--upstream",
        "oidc",
        "--integration",
        "google",
        "--broker-connection",
        "nc-9",
    )
    conn = Connection.objects.get(pk="c_cli")
    assert (conn.broker_integration, conn.broker_connection, conn.upstream_provider) == ("google", "nc-9", "oidc")
    with pytest.raises(SystemExit):
        call_command("revive_connection", "c_cli2", "--provider", "nango", "--owner-email", "a@b.c", "--subject", "s")
    assert "INVALID_INPUT --upstream" in capsys.readouterr().err


def test_revive_connection_checks_a_broker_held_identity_by_its_upstreams_rules(capsys):
    """A Nango connection holding an Entra grant records Entra ids: GUIDs, as for a direct Entra connection."""
    with pytest.raises(SystemExit):
        call_command(
            "revive_connection",
            "c_entra_bad",
            "--provider",
            "nango",
            "--owner-email",
            "ada@contoso.example",
            "--subject",
            "<oid>",
            "--tenant",
            "<tid>",
            "--upstream",
            "entra",
            "--integration",
            "microsoft",
            "--broker-connection",
            "nc-3",
        )
    assert "must be a GUID" in capsys.readouterr().err
    assert not Connection.objects.filter(pk="c_entra_bad").exists()
    call_command(
        "revive_connection",
        "c_entra_ok",
        "--provider",
        "nango",
        "--owner-email",
        "ada@contoso.example",
        "--subject",
        "1b2c3d4e-0000-4000-8000-00000000abcd",
        "--tenant",
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "--upstream",
        "entra",
        "--integration",
        "microsoft",
        "--broker-connection",
        "nc-4",
    )
    assert Connection.objects.get(pk="c_entra_ok").identity_provider == "entra"


def test_the_admin_shows_the_broker_references_and_checks_identity_changes_by_the_upstream_rule(admin_client):
    """Connections are added by ``revive_connection`` (the admin's add is off); a broker-held one's page shows the
    broker's references, and its identity reason form applies the upstream provider's rule (Entra: GUIDs)."""
    conn = services.connection_create(
        connection_id="c_admin",
        provider="nango",
        upstream_provider="entra",
        broker_integration="microsoft",
        broker_connection="nc-7",
        owner_email="ada@contoso.example",
        provider_subject="1b2c3d4e-0000-4000-8000-00000000abcd",
        provider_tenant="72f988bf-86f1-41af-91ab-2d7cd011db47",
    )
    assert admin_client.get("/admin/cases/connection/add/").status_code == 403
    page = admin_client.get(f"/admin/cases/connection/{conn.pk}/change/").content.decode()
    assert "Held by a broker" in page and "nc-7" in page and "microsoft" in page
    refused = admin_client.post(
        f"/admin/cases/connection/{conn.pk}/identity/",
        {
            "owner_email": "ada@contoso.example",
            "provider_subject": "<oid>",
            "provider_tenant": "<tid>",
            "provider_issuer": "",
            "provider_org": "",
            "reason": "placeholder test",
        },
    )
    assert refused.status_code == 200
    assert "must be a GUID" in refused.context["form"].errors["provider_tenant"][0]
    conn.refresh_from_db()
    assert conn.provider_tenant == "72f988bf-86f1-41af-91ab-2d7cd011db47"
