"""Auth0 Token Vault: the upstream access token of a connected account, exchanged at each use.

Token Vault keeps the upstream grant (Google, Microsoft, ...) in Auth0. A worker trades the user's Auth0 token
for the upstream access token with the federated-connection token exchange::

    POST https://{domain}/oauth/token
    grant_type=urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token
    client_id, client_secret
    subject_token=<the user's Auth0 refresh token (or access token)>
    subject_token_type=urn:ietf:params:oauth:token-type:refresh_token   (or ...:access_token)
    requested_token_type=http://auth0.com/oauth/token-type/federated-connection-access-token
    connection=<the Auth0 connection, e.g. google-oauth2>   [login_hint=<upstream account>]

Nothing is stored: not by this helper, not by Revive. When the exchange is refused the helper raises
``ProviderError`` with Auth0's answer; Revive classifies it for a connection of provider ``auth0_token_vault``
(``federated_connection_refresh_token_not_found`` and any other 4xx: the owner re-links the connected account;
Auth0's ``invalid_grant`` for the subject token: the owner signs in to Auth0 again). Token Vault requires
refresh-token rotation off for the subject refresh token, so no single-flight refresh is needed here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import ProviderError

GRANT_TYPE = "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token"
SUBJECT_TOKEN_TYPES = {
    "refresh_token": "urn:ietf:params:oauth:token-type:refresh_token",
    "access_token": "urn:ietf:params:oauth:token-type:access_token",
}
REQUESTED_TOKEN_TYPE = "http://auth0.com/oauth/token-type/federated-connection-access-token"


@dataclass(frozen=True)
class FederatedToken:
    """An upstream access token from Token Vault; its ``repr`` never shows the token."""

    access_token: str = field(repr=False)
    connection: str
    expires_at: float | None = None
    scope: str = ""
    issued_token_type: str = REQUESTED_TOKEN_TYPE


def exchange_form(
    *,
    client_id: str,
    client_secret: str,
    connection: str,
    subject_token: str,
    subject_token_type: str = "refresh_token",
    login_hint: str | None = None,
    scope: str | None = None,
) -> dict[str, str]:
    """The token endpoint's form for one exchange (shared by the sync and async helpers)."""
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise ValueError(f"subject_token_type must be one of {sorted(SUBJECT_TOKEN_TYPES)}")
    if not connection or not subject_token:
        raise ValueError("connection and subject_token are required")
    form = {
        "grant_type": GRANT_TYPE,
        "client_id": client_id,
        "subject_token": subject_token,
        "subject_token_type": SUBJECT_TOKEN_TYPES[subject_token_type],
        "requested_token_type": REQUESTED_TOKEN_TYPE,
        "connection": connection,
    }
    if client_secret:
        form["client_secret"] = client_secret
    if login_hint:
        form["login_hint"] = login_hint
    if scope:
        form["scope"] = scope
    return form


def exchange_result(response: httpx.Response, *, connection: str) -> FederatedToken:
    """The token of a successful exchange, or ``ProviderError`` carrying Auth0's answer."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
        raise ProviderError(
            response.status_code,
            body,
            {
                k: v
                for k, v in response.headers.items()
                if k.lower() in ("content-type", "retry-after", "x-ratelimit-reset", "www-authenticate")
            },
        )
    expires_in = body.get("expires_in")
    return FederatedToken(
        access_token=body["access_token"],
        connection=connection,
        expires_at=time.time() + float(expires_in) if isinstance(expires_in, (int, float)) else None,
        scope=body.get("scope", "") or "",
        issued_token_type=body.get("issued_token_type", REQUESTED_TOKEN_TYPE),
    )


def _network_error(exc: httpx.TransportError) -> ProviderError:
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return ProviderError(None, None, None, error_kind=kind)


class _Client:
    """What both helpers share: the token endpoint and the client's credentials."""

    def __init__(self, domain: str, client_id: str, client_secret: str = "") -> None:
        base = domain if "://" in domain else f"https://{domain}"
        self.token_url = base.rstrip("/") + "/oauth/token"
        self.client_id, self._client_secret = client_id, client_secret

    def _form(self, **exchange: Any) -> dict[str, str]:
        return exchange_form(client_id=self.client_id, client_secret=self._client_secret, **exchange)


class TokenVault(_Client):
    """Exchanges at ``https://{domain}/oauth/token`` (``domain`` may be a full URL, e.g. a local stand-in)."""

    def __init__(
        self,
        domain: str,
        client_id: str,
        client_secret: str = "",
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(domain, client_id, client_secret)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def exchange(
        self,
        *,
        connection: str,
        subject_token: str,
        subject_token_type: str = "refresh_token",
        login_hint: str | None = None,
        scope: str | None = None,
    ) -> FederatedToken:
        form = self._form(
            connection=connection,
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            login_hint=login_hint,
            scope=scope,
        )
        try:
            response = self._http.post(self.token_url, data=form)
        except httpx.TransportError as exc:
            raise _network_error(exc) from exc
        return exchange_result(response, connection=connection)

    def credential(
        self,
        *,
        connection: str,
        subject_token: Callable[[], str],
        subject_token_type: str = "refresh_token",
        login_hint: str | None = None,
        scope: str | None = None,
    ) -> Callable[[], str]:
        """A ``credential`` callback for ``protect_action``: the upstream access token, exchanged at each call."""

        def get() -> str:
            return self.exchange(
                connection=connection,
                subject_token=subject_token(),
                subject_token_type=subject_token_type,
                login_hint=login_hint,
                scope=scope,
            ).access_token

        return get


class AsyncTokenVault(_Client):
    """``TokenVault`` for ``AsyncRevive``; ``subject_token`` may be a coroutine function."""

    def __init__(
        self,
        domain: str,
        client_id: str,
        client_secret: str = "",
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(domain, client_id, client_secret)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def exchange(
        self,
        *,
        connection: str,
        subject_token: str,
        subject_token_type: str = "refresh_token",
        login_hint: str | None = None,
        scope: str | None = None,
    ) -> FederatedToken:
        form = self._form(
            connection=connection,
            subject_token=subject_token,
            subject_token_type=subject_token_type,
            login_hint=login_hint,
            scope=scope,
        )
        try:
            response = await self._http.post(self.token_url, data=form)
        except httpx.TransportError as exc:
            raise _network_error(exc) from exc
        return exchange_result(response, connection=connection)

    def credential(
        self,
        *,
        connection: str,
        subject_token: Callable[[], str | Awaitable[str]],
        subject_token_type: str = "refresh_token",
        login_hint: str | None = None,
        scope: str | None = None,
    ) -> Callable[[], Awaitable[str]]:
        async def get() -> str:
            token = subject_token()
            if not isinstance(token, str):
                token = await token
            found = await self.exchange(
                connection=connection,
                subject_token=token,
                subject_token_type=subject_token_type,
                login_hint=login_hint,
                scope=scope,
            )
            return found.access_token

        return get
