"""Builds ``SOCIALACCOUNT_PROVIDERS`` for the owner reconnect from plain values.

``revive_site/settings.py`` reads the environment and calls
:func:`socialaccount_providers`; nothing here reads the environment or imports
Django models, so it is safe at settings time.

Every app carries a ``revive`` block in its ``settings`` saying which
connections it signs in (``serves``): a connection provider plus its tenant
(Entra) or issuer (Auth0, OIDC), or ``"*"`` for any. ``reauth.providers``
picks the app for a connection from these blocks.

* Microsoft Entra ID: one ``openid_connect`` app per tenant, because the
  issuer inside an Entra token is per tenant and allauth verifies it against
  the discovery document of the app's server URL
  (``https://login.microsoftonline.com/<tid>/v2.0``). ``uid_field`` is
  ``oid`` and the ID token (which carries ``tid`` and ``oid``) is used instead
  of the userinfo endpoint (which carries neither).
* Any OIDC issuer: one ``openid_connect`` app each.
* Auth0: allauth's ``auth0`` provider.
* The lab identity provider (``lab.idp.settings``): one
  ``openid_connect`` app that plays Entra for any tenant and is an OIDC issuer
  of its own.

PKCE is on for every app. Entra apps (and the lab app that plays Entra) declare the client capabilities
(``cp1``: "this client handles claims challenges", which turns on continuous access evaluation) through
the ``claims`` authorization parameter; a case's own claims challenge is merged into it at sign-in
(``reauth.providers.sign_in_auth_params``).
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_SCOPE = ["openid", "profile", "email"]
ENTRA_DEFAULT_SCOPE = ["openid", "profile", "email", "offline_access"]
LAB_PROVIDER_ID = "lab-idp"


def client_capabilities_claims(capabilities: list[str]) -> str:
    """Entra's claims request declaring client capabilities (``xms_cc``), as MSAL sends it."""
    return json.dumps(
        {"access_token": {"xms_cc": {"values": list(capabilities)}}}, separators=(",", ":"), sort_keys=True
    )


def _oidc_app(
    *,
    provider_id: str,
    name: str,
    client_id: str,
    secret: str,
    server_url: str,
    serves: list[dict[str, str]],
    scope: list[str],
    uid_field: str = "sub",
    fetch_userinfo: bool = True,
    auth_params: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "provider_id": provider_id,
        "name": name,
        "client_id": client_id,
        "secret": secret,
        "settings": {
            "server_url": server_url,
            "uid_field": uid_field,
            "fetch_userinfo": fetch_userinfo,
            "oauth_pkce_enabled": True,
            "scope": list(scope),
            "auth_params": dict(auth_params or {}),
            "revive": {"serves": serves},
        },
    }


def socialaccount_providers(
    *,
    entra_client_id: str = "",
    entra_client_secret: str = "",
    entra_tenants: list[str] | None = None,
    entra_authority: str = "https://login.microsoftonline.com",
    entra_scope: list[str] | None = None,
    auth0_url: str = "",
    auth0_client_id: str = "",
    auth0_client_secret: str = "",
    auth0_scope: list[str] | None = None,
    oidc_apps: list[dict[str, Any]] | None = None,
    lab_idp_url: str = "",
    lab_client_id: str = "",
    lab_client_secret: str = "",
    entra_client_capabilities: list[str] | None = None,
) -> dict[str, Any]:
    oidc: list[dict[str, Any]] = []
    entra_params = {"prompt": "select_account"}
    capabilities = ["cp1"] if entra_client_capabilities is None else [c for c in entra_client_capabilities if c]
    if capabilities:
        entra_params["claims"] = client_capabilities_claims(capabilities)
    if entra_client_id:
        authority = entra_authority.rstrip("/")
        for tenant in entra_tenants or []:
            oidc.append(
                _oidc_app(
                    provider_id=f"entra-{tenant}",
                    name="Microsoft Entra ID",
                    client_id=entra_client_id,
                    secret=entra_client_secret,
                    server_url=f"{authority}/{tenant}/v2.0",
                    serves=[{"provider": "entra", "tenant": tenant}],
                    scope=entra_scope or ENTRA_DEFAULT_SCOPE,
                    uid_field="oid",
                    fetch_userinfo=False,
                    auth_params=dict(entra_params),
                )
            )
    for app in oidc_apps or []:
        issuer = app.get("issuer") or app["server_url"]
        oidc.append(
            _oidc_app(
                provider_id=app["provider_id"],
                name=app.get("name") or app["provider_id"],
                client_id=app["client_id"],
                secret=app.get("secret", ""),
                server_url=app["server_url"],
                serves=[{"provider": app.get("connection_provider", "oidc"), "issuer": issuer}],
                scope=app.get("scope") or DEFAULT_SCOPE,
                auth_params=app.get("auth_params"),
            )
        )
    if lab_idp_url and lab_client_id:
        url = lab_idp_url.rstrip("/")
        oidc.append(
            _oidc_app(
                provider_id=LAB_PROVIDER_ID,
                name="Revive lab identity provider",
                client_id=lab_client_id,
                secret=lab_client_secret,
                server_url=url,
                serves=[{"provider": "entra", "tenant": "*"}, {"provider": "oidc", "issuer": url}],
                scope=DEFAULT_SCOPE,
                uid_field="oid",
                fetch_userinfo=False,
                auth_params=dict(entra_params),
            )
        )

    providers: dict[str, Any] = {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": oidc}}
    if auth0_url and auth0_client_id:
        url = auth0_url.rstrip("/")
        providers["auth0"] = {
            "AUTH0_URL": url,
            "OAUTH_PKCE_ENABLED": True,
            "SCOPE": auth0_scope or DEFAULT_SCOPE,
            "APPS": [
                {
                    "client_id": auth0_client_id,
                    "secret": auth0_client_secret,
                    "settings": {
                        "oauth_pkce_enabled": True,
                        "revive": {"serves": [{"provider": "auth0", "issuer": f"{url}/"}]},
                    },
                }
            ],
        }
    return providers
