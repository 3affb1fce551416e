"""Identity matching, one row per rule, and picking the allauth app that signs a connection's owner in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reauth.identity import ENTRA, ISSUER_SUBJECT, ProviderIdentity, compare, mask_email, presented_from_claims
from reauth.provider_settings import socialaccount_providers
from reauth.providers import sign_in_app_for, sign_in_apps

TID, OID = "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01", "b1e2c3d4-5a6b-4c7d-8e9f-0a1b2c3d4e01"
ISS = "https://revive-lab.eu.auth0.com/"

ROWS = [
    # rule, expected, presented, matches, mismatched
    ("entra same tenant and oid", ENTRA, dict(tenant=TID, subject=OID), dict(tenant=TID, subject=OID), ()),
    (
        "entra ids compare case-insensitively",
        ENTRA,
        dict(tenant=TID, subject=OID),
        dict(tenant=TID.upper(), subject=OID.upper()),
        (),
    ),
    (
        "entra same oid in another tenant",
        ENTRA,
        dict(tenant=TID, subject=OID),
        dict(tenant="other", subject=OID),
        ("tenant",),
    ),
    (
        "entra another user in the tenant",
        ENTRA,
        dict(tenant=TID, subject=OID),
        dict(tenant=TID, subject="other"),
        ("subject",),
    ),
    ("entra nothing presented", ENTRA, dict(tenant=TID, subject=OID), dict(), ("tenant", "subject")),
    (
        "entra connection without a tenant refuses everyone",
        ENTRA,
        dict(subject=OID),
        dict(tenant="", subject=OID),
        ("tenant",),
    ),
    (
        "entra ignores issuer and sub",
        ENTRA,
        dict(tenant=TID, subject=OID, issuer="x"),
        dict(tenant=TID, subject=OID, issuer="y"),
        (),
    ),
    (
        "oidc same issuer and subject",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1"),
        dict(issuer=ISS, subject="auth0|1"),
        (),
    ),
    (
        "oidc issuer trailing slash",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1"),
        dict(issuer=ISS.rstrip("/"), subject="auth0|1"),
        (),
    ),
    (
        "oidc another issuer",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1"),
        dict(issuer="https://evil.example/", subject="auth0|1"),
        ("issuer",),
    ),
    (
        "oidc subject is case-sensitive",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|abc"),
        dict(issuer=ISS, subject="auth0|ABC"),
        ("subject",),
    ),
    (
        "oidc empty expected subject refuses",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject=""),
        dict(issuer=ISS, subject=""),
        ("subject",),
    ),
    (
        "auth0 recorded org must match",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1", org="org_A"),
        dict(issuer=ISS, subject="auth0|1", org="org_B"),
        ("org",),
    ),
    (
        "auth0 recorded org missing",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1", org="org_A"),
        dict(issuer=ISS, subject="auth0|1"),
        ("org",),
    ),
    (
        "auth0 recorded org present",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1", org="org_A"),
        dict(issuer=ISS, subject="auth0|1", org="org_A"),
        (),
    ),
    (
        "auth0 no org recorded",
        ISSUER_SUBJECT,
        dict(issuer=ISS, subject="auth0|1"),
        dict(issuer=ISS, subject="auth0|1", org="org_A"),
        (),
    ),
]


@pytest.mark.parametrize("name, rule, expected, presented, mismatched", ROWS, ids=[r[0] for r in ROWS])
def test_identity_rules(name, rule, expected, presented, mismatched):
    verdict = compare(rule=rule, expected=ProviderIdentity(**expected), presented=ProviderIdentity(**presented))
    assert verdict.mismatched == mismatched
    assert verdict.matches is (not mismatched)


def test_claims_give_the_identity_of_each_rule():
    claims = {
        "iss": "https://login.microsoftonline.com/t/v2.0",
        "sub": "pairwise",
        "tid": TID,
        "oid": OID,
        "email": "ada@contoso.example",
    }
    assert presented_from_claims(claims, rule=ENTRA) == ProviderIdentity(issuer=claims["iss"], subject=OID, tenant=TID)
    auth0 = {"sub": "auth0|1", "org_id": "org_A", "email": "a@x"}
    assert presented_from_claims(auth0, rule=ISSUER_SUBJECT, issuer=ISS) == ProviderIdentity(
        issuer=ISS, subject="auth0|1", org="org_A"
    )
    assert presented_from_claims({"sub": 5, "tid": ["x"]}, rule=ENTRA) == ProviderIdentity()


@pytest.mark.parametrize(
    "value, masked",
    [
        ("jane.doe@contoso.com", "ja•••@contoso.com"),
        ("ada@contoso.example", "a•••@contoso.example"),
        ("b1e2c3d4-5a6b", "b1e2•••6b"),
        ("", ""),
        ("abc", "•••"),
    ],
)
def test_masking(value, masked):
    assert mask_email(value) == masked


def conn(provider, tenant="", issuer=""):
    return SimpleNamespace(provider=provider, provider_tenant=tenant, provider_issuer=issuer)


@pytest.fixture
def configured(settings):
    settings.SOCIALACCOUNT_PROVIDERS = socialaccount_providers(
        entra_client_id="entra-app",
        entra_client_secret="s",
        entra_tenants=[TID, "tid-fabrikam"],
        auth0_url="https://revive-lab.eu.auth0.com",
        auth0_client_id="auth0-app",
        auth0_client_secret="s",
        oidc_apps=[
            {
                "provider_id": "okta",
                "name": "Okta",
                "server_url": "https://acme.okta.com",
                "issuer": "https://acme.okta.com",
                "client_id": "okta-app",
                "secret": "s",
            }
        ],
        lab_idp_url="http://127.0.0.1:8765",
        lab_client_id="revive-lab",
        lab_client_secret="s",
    )
    return settings.SOCIALACCOUNT_PROVIDERS


@pytest.mark.django_db
def test_entra_apps_are_per_tenant_with_oid_as_uid(configured):
    apps = {a["provider_id"]: a for a in configured["openid_connect"]["APPS"]}
    entra = apps[f"entra-{TID}"]["settings"]
    assert entra["server_url"] == f"https://login.microsoftonline.com/{TID}/v2.0"
    assert entra["uid_field"] == "oid" and entra["fetch_userinfo"] is False and entra["oauth_pkce_enabled"] is True
    assert "offline_access" in entra["scope"]
    assert (
        configured["auth0"]["OAUTH_PKCE_ENABLED"] is True
        and configured["auth0"]["AUTH0_URL"] == "https://revive-lab.eu.auth0.com"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "connection, provider_id",
    [
        (conn("entra", tenant=TID), f"entra-{TID}"),  # the tenant's own app before the lab's wildcard
        (conn("entra", tenant="tid-fabrikam"), "entra-tid-fabrikam"),
        (conn("entra", tenant="tid-unknown"), "lab-idp"),  # only the lab serves any tenant
        (conn("auth0", issuer=ISS), "auth0"),
        (conn("oidc", issuer="https://acme.okta.com/"), "okta"),
        (conn("oidc", issuer="http://127.0.0.1:8765"), "lab-idp"),
    ],
)
def test_the_app_for_a_connection(configured, rf, connection, provider_id):
    assert sign_in_app_for(rf.get("/"), connection).provider_id == provider_id


@pytest.mark.django_db
def test_no_app_for_an_unknown_issuer_or_a_vault_provider(configured, rf):
    from reauth.errors import ReconnectProviderNotConfigured

    assert sign_in_apps(rf.get("/"), conn("oidc", issuer="https://unknown.example")) == []
    with pytest.raises(ReconnectProviderNotConfigured):
        sign_in_app_for(rf.get("/"), conn("nango"))
