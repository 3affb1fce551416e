"""Input checks where an operator registers a connection: the command and the admin refuse the same bad input."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from cases.models import Connection
from cases.services import connection_create

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "1b2c3d4e-0000-4000-8000-00000000abcd"

ENTRA_OK = {"provider": "entra", "owner_email": "ops@contoso.com", "subject": OID, "tenant": TENANT, "issuer": ""}

BAD = [
    pytest.param({**ENTRA_OK, "tenant": "<tid>"}, "--tenant", "must be a GUID", id="entra-tenant-placeholder"),
    pytest.param({**ENTRA_OK, "subject": "<oid>"}, "--subject", "must be a GUID", id="entra-oid-placeholder"),
    pytest.param({**ENTRA_OK, "tenant": ""}, "--tenant", "need the tenant id", id="entra-tenant-missing"),
    pytest.param({**ENTRA_OK, "tenant": "{" + TENANT + "}"}, "--tenant", "8-4-4-4-12", id="entra-tenant-braced"),
    pytest.param({**ENTRA_OK, "owner_email": "ops-at-contoso"}, "--owner-email", "valid email", id="email"),
    pytest.param(
        {
            "provider": "auth0",
            "owner_email": "o@example.com",
            "subject": "auth0|1",
            "tenant": "",
            "issuer": "tenant.auth0.com",
        },
        "--issuer",
        "must be a URL",
        id="issuer-not-a-url",
    ),
    pytest.param(
        {
            "provider": "oidc",
            "owner_email": "o@example.com",
            "subject": "s",
            "tenant": "",
            "issuer": "http://idp.example.com/",
        },
        "--issuer",
        "must use https",
        id="issuer-plain-http",
    ),
    pytest.param(
        {
            "provider": "oidc",
            "owner_email": "o@example.com",
            "subject": "s",
            "tenant": "",
            "issuer": "https://user:pw@idp.example.com/",
        },
        "--issuer",
        "user-info",
        id="issuer-userinfo",
    ),
    pytest.param(
        {"provider": "auth0", "owner_email": "o@example.com", "subject": "auth0|1", "tenant": "", "issuer": ""},
        "--issuer",
        "need the issuer",
        id="issuer-missing",
    ),
]


def _command(connection_id: str, values: dict) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    args = [
        "revive_connection",
        connection_id,
        "--provider",
        values["provider"],
        "--owner-email",
        values["owner_email"],
        "--subject",
        values["subject"],
        "--tenant",
        values["tenant"],
        "--issuer",
        values["issuer"],
    ]
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize("values, option, words", BAD)
def test_command_refuses_bad_input_and_stores_nothing(values, option, words):
    code, out, err = _command("conn_bad", values)

    assert code == 2, out
    assert f"INVALID_INPUT {option}: " in err and words in err, err
    assert not Connection.objects.filter(pk="conn_bad").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "values",
    [
        ENTRA_OK,
        {**ENTRA_OK, "tenant": TENANT.upper(), "subject": OID.upper()},
        {
            "provider": "auth0",
            "owner_email": "o@example.com",
            "subject": "auth0|1",
            "tenant": "",
            "issuer": "https://tenant.eu.auth0.com/",
        },
        {
            "provider": "oidc",
            "owner_email": "o@example.com",
            "subject": "ada",
            "tenant": "",
            "issuer": "http://127.0.0.1:8123/idp",
        },  # a local identity provider, as the lab runs
    ],
    ids=["entra", "entra-upper-case", "auth0", "oidc-loopback"],
)
def test_command_accepts_good_input(values):
    code, out, err = _command("conn_good", values)

    assert code == 0, err
    assert "at generation 1" in out
    assert Connection.objects.get(pk="conn_good").provider == values["provider"]


@pytest.mark.django_db
def test_admin_identity_form_shows_each_problem_beside_its_field(client):
    """Connections are added by the command; the admin changes an identity only through its reason form."""
    conn = connection_create(
        connection_id="conn_entra_ok",
        provider="entra",
        owner_email="ops@contoso.com",
        provider_subject="1b2c3d4e-0000-4000-8000-00000000abcd",
        provider_tenant="72f988bf-86f1-41af-91ab-2d7cd011db47",
        actor="test",
    )
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-1")
    client.force_login(admin)
    response = client.post(
        f"/admin/cases/connection/{conn.pk}/identity/",
        {
            "owner_email": "not-an-email",
            "provider_subject": "<oid>",
            "provider_tenant": "<tid>",
            "provider_issuer": "",
            "provider_org": "",
            "reason": "placeholder test",
        },
    )

    assert response.status_code == 200  # the form again, not a redirect
    errors = response.context["form"].errors
    assert "must be a GUID" in errors["provider_tenant"][0]
    assert "must be a GUID" in errors["provider_subject"][0]
    assert "email" in errors["owner_email"][0].lower()
    conn.refresh_from_db()
    assert conn.provider_tenant == "72f988bf-86f1-41af-91ab-2d7cd011db47"
