"""Revive proves a broker-held connection's identity itself, from what the broker holds after a reconnect.

A broker's re-authorization "authenticates as whoever is in the browser". So before a reconnect through a broker
may advance the generation, Revive reads the connection's credentials from the broker and takes the upstream
identity from

1. the ID token in the provider's raw token response, verified here: signature against the JWKS of the issuer
   the connection was recorded with (Entra: the recorded tenant's issuer), ``iss`` equal to that issuer, and
   ``exp``/``iat`` with a small leeway -- never an issuer the token names for itself; or, if the provider gave
   no ID token,
2. that issuer's userinfo endpoint, called with the new access token.

The tokens are used for this one check and dropped: nothing of them is stored, logged or audited. Whatever
cannot be proved gives an empty identity, which the usual comparison refuses.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import httpx
import jwt
from django.conf import settings

from ..errors import ReconnectProviderUnreachable, ReconnectSignInFailed
from ..identity import ProviderIdentity, presented_from_claims, rule_for
from ..upstream_identity import identity_from_userinfo

logger = logging.getLogger(__name__)
LEEWAY_SECONDS = 300
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class IdentityUnavailable(Exception):
    """The issuer could not be asked (network, 5xx): try again later."""


def trusted_issuer(connection) -> str:
    if connection.provider_issuer:
        return connection.provider_issuer.rstrip("/")
    if rule_for(connection.identity_provider) == "entra" and connection.provider_tenant:
        return f"{settings.REVIVE_ENTRA_AUTHORITY.rstrip('/')}/{connection.provider_tenant}/v2.0"
    return ""


@lru_cache(maxsize=32)
def _discovery(issuer: str) -> dict[str, Any]:
    try:
        response = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=settings.REVIVE_BROKER_TIMEOUT)
    except httpx.HTTPError as exc:
        raise IdentityUnavailable(type(exc).__name__) from None
    if response.status_code >= 500:
        raise IdentityUnavailable(f"discovery {response.status_code}")
    response.raise_for_status()
    return response.json()


def _id_token_claims(id_token: str, issuer: str) -> dict[str, Any] | None:
    jwks_uri = _discovery(issuer).get("jwks_uri")
    if not jwks_uri:
        return None
    try:
        key = jwt.PyJWKClient(
            jwks_uri, cache_keys=True, timeout=int(settings.REVIVE_BROKER_TIMEOUT)
        ).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=_ALGORITHMS,
            leeway=LEEWAY_SECONDS,
            options={"verify_aud": False, "require": ["iss", "exp"]},
        )
    except jwt.PyJWKClientConnectionError as exc:
        raise IdentityUnavailable(str(exc)[:100]) from None
    except jwt.PyJWTError as exc:
        logger.warning("broker identity proof: the ID token did not verify (%s)", type(exc).__name__)
        return None
    if str(claims.get("iss", "")).rstrip("/") != issuer:
        logger.warning("broker identity proof: the ID token names another issuer")
        return None
    return claims


def identity_from_credentials(connection, credentials: dict[str, Any]) -> tuple[ProviderIdentity, str]:
    """The identity the broker's credentials prove, and how (``id_token``, ``userinfo`` or ``none``).

    ``credentials`` is the broker's credentials object (Nango: ``type``, ``access_token``, ``raw``). Raises
    ``IdentityUnavailable`` when the issuer could not be reached.
    """
    issuer = trusted_issuer(connection)
    if not issuer:
        return ProviderIdentity(), "none"
    found = credentials.get("raw")
    raw: dict[str, Any] = found if isinstance(found, dict) else {}
    rule = rule_for(connection.identity_provider)
    id_token = raw.get("id_token") or credentials.get("id_token") or ""
    if isinstance(id_token, str) and id_token:
        claims = _id_token_claims(id_token, issuer)
        return (
            (presented_from_claims(claims, rule=rule, issuer=issuer), "id_token")
            if claims
            else (ProviderIdentity(), "none")
        )
    access_token = credentials.get("access_token") or raw.get("access_token") or ""
    endpoint = _discovery(issuer).get("userinfo_endpoint")
    if not endpoint or not isinstance(access_token, str) or not access_token:
        return ProviderIdentity(), "none"
    try:  # the one userinfo check, shared with the Token Vault re-link
        presented = identity_from_userinfo(
            userinfo_url=endpoint,
            access_token=access_token,
            issuer=issuer,
            connection_provider=connection.identity_provider,
            timeout=settings.REVIVE_BROKER_TIMEOUT,
        )
    except ReconnectProviderUnreachable:
        raise IdentityUnavailable("userinfo") from None
    except ReconnectSignInFailed:
        return ProviderIdentity(), "none"
    return presented, "userinfo"
