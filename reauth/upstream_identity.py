"""Proving who an upstream account is when Revive never signs the owner in itself.

Brokers (Nango, Scalekit) and Auth0 Token Vault hold the upstream grant; after the owner (re)connects there,
Revive still checks that the connected account is the recorded one (contract invariant 4). It asks the upstream
provider with an access token for the account, used once and dropped: the userinfo endpoint (OIDC Core §5.3)
gives ``sub`` (and Entra's ``tid``/``oid`` where the upstream is Entra). The result is a ``ProviderIdentity``
compared by ``reauth.identity.compare`` like any sign-in.
"""

from __future__ import annotations

import httpx

from .errors import ReconnectProviderUnreachable, ReconnectSignInFailed
from .identity import ProviderIdentity, presented_from_claims, rule_for


def identity_from_userinfo(
    *, userinfo_url: str, access_token: str, issuer: str, connection_provider: str, timeout: float = 10.0
) -> ProviderIdentity:
    """The identity behind ``access_token`` according to the upstream's userinfo; ``issuer`` is the configured
    upstream issuer (userinfo does not carry one)."""
    try:
        response = httpx.get(
            userinfo_url,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.TransportError as exc:
        raise ReconnectProviderUnreachable(data={"step": "userinfo"}) from exc
    try:
        claims = response.json() if response.status_code == 200 else None
    except ValueError:
        claims = None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise ReconnectSignInFailed(data={"reason": "userinfo", "status": response.status_code})
    claims.pop("iss", None)
    return presented_from_claims(claims, rule=rule_for(connection_provider), issuer=issuer)
