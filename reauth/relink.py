"""The owner's reconnect for an Auth0 Token Vault connection: re-link the connected account.

A ``relink_required`` case means the upstream grant behind the owner's connected account is gone; signing in to
Auth0 again would not bring it back. The owner re-links it through the My Account API's Connected Accounts flow:

1. ``relink_begin``: Revive gets a My Account API token for the owner from the connection's Auth0 grant in custody
   (``refresh_token`` grant, ``audience=https://{domain}/me/``, scope ``create:me:connected_accounts``), calls
   ``POST /me/v1/connected-accounts/connect`` with PKCE (S256) and a ``state``, keeps ``state``, the verifier and
   ``auth_session`` in the owner's server-side session, and sends the browser to ``connect_uri?ticket=…``;
2. the upstream provider's consent sends the browser back to ``/reconnect/r/<id>/relinked?connect_code=…&state=…``;
3. ``relink_complete``: ``POST /me/v1/connected-accounts/complete``; then Revive proves who was linked: a Token
   Vault exchange gives an upstream access token, used once against the upstream's userinfo
   (``reauth.upstream_identity``) and dropped. The same account: the request is consumed and the generation
   advances (``services.reconnect_request_complete``: the connection's Auth0 grant is stored again under the new
   generation; no upstream token is stored anywhere). Another account: refused and audited like any mismatch,
   and the wrongly linked account is deleted at Auth0 so the vault does not keep it.

Configuration: ``REVIVE_AUTH0_TOKEN_VAULT`` (``domain``, ``client_id``, ``client_secret``, and per Auth0 connection
its upstream ``userinfo_url``, ``issuer`` and ``scopes``). The connection records the Auth0 connection name in
``provider_tenant`` and the upstream account's issuer and subject in ``provider_issuer`` / ``provider_subject``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse

from revive_sdk.auth0 import TokenVault
from revive_sdk.errors import ProviderError

from . import services
from .custody import Grant, get_custody
from .errors import (
    ReconnectProviderNotConfigured,
    ReconnectProviderUnreachable,
    ReconnectSignInFailed,
)
from .models import ReconnectRequest
from .upstream_identity import identity_from_userinfo

logger = logging.getLogger(__name__)

SESSION_KEY = "revive_relink"
MY_ACCOUNT_SCOPE = "create:me:connected_accounts delete:me:connected_accounts"
PROVIDER_APP = "auth0_token_vault"


@dataclass(frozen=True)
class VaultConfig:
    url: str
    client_id: str
    client_secret: str = field(repr=False)
    connections: dict[str, dict[str, Any]]

    @property
    def my_account_audience(self) -> str:
        return f"{self.url}/me/"


def vault_config() -> VaultConfig:
    raw = getattr(settings, "REVIVE_AUTH0_TOKEN_VAULT", None) or {}
    if not raw.get("domain") or not raw.get("client_id"):
        raise ReconnectProviderNotConfigured(data={"provider": PROVIDER_APP})
    domain = raw["domain"]
    url = (domain if "://" in domain else f"https://{domain}").rstrip("/")
    return VaultConfig(
        url=url,
        client_id=raw["client_id"],
        client_secret=raw.get("client_secret", ""),
        connections=dict(raw.get("connections") or {}),
    )


def _upstream(config: VaultConfig, connection_name: str) -> dict[str, Any]:
    upstream = config.connections.get(connection_name)
    if not upstream or not upstream.get("userinfo_url") or not upstream.get("issuer"):
        raise ReconnectProviderNotConfigured(data={"provider": PROVIDER_APP, "connection": connection_name})
    return upstream


def _auth0_grant(connection_id: str) -> Grant:
    grant = get_custody().load(connection_id=connection_id)
    if grant is None or not grant.refresh_token:
        raise ReconnectSignInFailed(data={"reason": "no_auth0_session"})
    return grant


def _call(method: str, url: str, **kwargs) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=15.0, **kwargs)
    except httpx.TransportError as exc:
        raise ReconnectProviderUnreachable(data={"step": url.rsplit("/", 1)[-1]}) from exc


def _my_account_token(config: VaultConfig, grant: Grant) -> str:
    response = _call(
        "POST",
        f"{config.url}/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "refresh_token": grant.refresh_token,
            "audience": config.my_account_audience,
            "scope": MY_ACCOUNT_SCOPE,
        },
    )
    if response.status_code != 200:
        logger.warning("relink: My Account token refused (%s)", response.status_code)
        raise ReconnectSignInFailed(data={"reason": "my_account_token", "status": response.status_code})
    return response.json()["access_token"]


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _redirect_uri(req: ReconnectRequest) -> str:
    return f"{settings.PUBLIC_BASE_URL}{reverse('reauth:relinked', kwargs={'public_id': req.public_id})}"


def relink_begin(request: HttpRequest, req: ReconnectRequest) -> str:
    """Start the Connected Accounts flow; return the URL to send the owner's browser to."""
    config = vault_config()
    conn = req.connection
    upstream = _upstream(config, conn.provider_tenant)
    token = _my_account_token(config, _auth0_grant(conn.pk))
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(24)
    response = _call(
        "POST",
        f"{config.url}/me/v1/connected-accounts/connect",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "connection": conn.provider_tenant,
            "redirect_uri": _redirect_uri(req),
            "state": state,
            "scopes": list(upstream.get("scopes") or []),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    if response.status_code not in (200, 201):
        raise ReconnectSignInFailed(data={"reason": "connect", "status": response.status_code})
    body = response.json()
    stash = request.session.get(SESSION_KEY) or {}
    stash[str(req.public_id)] = {"state": state, "verifier": verifier, "auth_session": body["auth_session"]}
    request.session[SESSION_KEY] = stash
    services.reconnect_sign_in_started(public_id=req.public_id, provider_app=f"{PROVIDER_APP}:{conn.provider_tenant}")
    ticket = (body.get("connect_params") or {}).get("ticket", "")
    separator = "&" if "?" in body["connect_uri"] else "?"
    return f"{body['connect_uri']}{separator}{httpx.QueryParams({'ticket': ticket})}"


def relink_complete(
    request: HttpRequest, req: ReconnectRequest, *, connect_code: str, state: str
) -> services.Completion:
    """Finish the Connected Accounts flow, prove the linked upstream account, settle the request."""
    stash = (request.session.get(SESSION_KEY) or {}).pop(str(req.public_id), None)
    request.session.modified = True
    if not stash or not state or not secrets.compare_digest(stash["state"], state) or not connect_code:
        raise ReconnectSignInFailed(data={"reason": "state"})
    config = vault_config()
    conn = req.connection
    upstream = _upstream(config, conn.provider_tenant)
    grant = _auth0_grant(conn.pk)
    my_account = _my_account_token(config, grant)
    response = _call(
        "POST",
        f"{config.url}/me/v1/connected-accounts/complete",
        headers={"Authorization": f"Bearer {my_account}"},
        json={
            "auth_session": stash["auth_session"],
            "connect_code": connect_code,
            "redirect_uri": _redirect_uri(req),
            "code_verifier": stash["verifier"],
        },
    )
    if response.status_code not in (200, 201):
        raise ReconnectSignInFailed(data={"reason": "complete", "status": response.status_code})
    account = response.json()
    presented = prove_linked_account(config, conn, grant, upstream)
    actor = f"owner:{presented.label or presented.subject or 'unknown'}"
    completion = services.reconnect_request_complete(
        public_id=req.public_id, presented=presented, grant=grant, actor=actor
    )
    if not completion.consumed:
        _delete_connected_account(config, my_account, account.get("id", ""))
    return completion


def prove_linked_account(config: VaultConfig, conn, grant: Grant, upstream: dict[str, Any]):
    """Who the vault now holds for this connection: a Token Vault exchange, then the upstream's userinfo."""
    vault = TokenVault(config.url, config.client_id, config.client_secret)
    try:
        federated = vault.exchange(connection=conn.provider_tenant, subject_token=grant.refresh_token)
    except ProviderError as exc:
        if exc.error_kind:
            raise ReconnectProviderUnreachable(data={"step": "token_exchange"}) from exc
        raise ReconnectSignInFailed(data={"reason": "token_exchange", "status": exc.status}) from exc
    finally:
        vault.close()
    return identity_from_userinfo(
        userinfo_url=upstream["userinfo_url"],
        access_token=federated.access_token,
        issuer=upstream["issuer"],
        connection_provider=conn.provider,
    )


def _delete_connected_account(config: VaultConfig, token: str, account_id: str) -> None:
    if not account_id:
        return
    try:
        httpx.delete(
            f"{config.url}/me/v1/connected-accounts/{account_id}",
            timeout=15.0,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.TransportError:
        logger.warning("relink: could not delete the wrongly linked connected account %s", account_id)
