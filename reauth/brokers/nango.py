"""Nango's HTTP API, as far as Revive uses it, and its webhook signature.

* ``POST /connect/sessions/reconnect`` ``{"connection_id", "integration_id"}`` → ``{"data": {"token", "expires_at"}}``:
  a Connect UI session that re-authorizes one existing connection.
* ``GET /connections/{connection_id}?provider_config_key=…`` → the connection with ``credentials``
  (``type``, ``access_token``, ``expires_at``, ``raw``: the provider's token response).
* Webhooks carry ``X-Nango-Hmac-Sha256``: hex HMAC-SHA256 of the raw body keyed with the environment's webhook
  signing key (the scheme of ``@nangohq/node``'s ``verifyIncomingWebhookRequest``).

Every call authenticates with ``Authorization: Bearer <REVIVE_NANGO_SECRET_KEY>``; the key never leaves this module.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from django.conf import settings

from . import BrokerError

SIGNATURE_HEADER = "X-Nango-Hmac-Sha256"


class NangoError(BrokerError):
    broker = "nango"


def signature(key: str, raw: bytes) -> str:
    return hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()


def signature_valid(key: str, raw: bytes, presented: str | None) -> bool:
    """Constant-time check of ``X-Nango-Hmac-Sha256`` over the exact bytes received."""
    if not key or not presented:
        return False
    return hmac.compare_digest(signature(key, raw), presented.strip().lower())


def _client() -> httpx.Client:
    return httpx.Client(
        base_url=settings.REVIVE_NANGO_URL.rstrip("/"),
        timeout=settings.REVIVE_BROKER_TIMEOUT,
        headers={"Authorization": f"Bearer {settings.REVIVE_NANGO_SECRET_KEY}"},
    )


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"code": str(error or ""), "message": ""}
        raise NangoError(response.status_code, str(error.get("code") or ""), str(error.get("message") or "")[:200])
    return body if isinstance(body, dict) else {}


def _call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        with _client() as client:
            return _answer(client.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        raise NangoError(None, "network", type(exc).__name__) from None


@dataclass(frozen=True)
class ConnectSession:
    token: str
    expires_at: str

    def __repr__(self) -> str:
        return f"ConnectSession(token=<redacted>, expires_at={self.expires_at!r})"


def reconnect_session(*, integration_id: str, connection_id: str) -> ConnectSession:
    body = _call(
        "POST", "/connect/sessions/reconnect", json={"connection_id": connection_id, "integration_id": integration_id}
    )
    data = body.get("data") or {}
    if not data.get("token"):
        raise NangoError(200, "malformed", "no session token in the answer")
    return ConnectSession(token=data["token"], expires_at=str(data.get("expires_at") or ""))


def connect_url(session: ConnectSession) -> str:
    """Where the owner's browser opens Nango's Connect UI for a session."""
    return f"{settings.REVIVE_NANGO_CONNECT_URL.rstrip('/')}/?{urlencode({'session_token': session.token})}"


def connection_credentials(*, integration_id: str, connection_id: str) -> dict[str, Any]:
    """The connection's ``credentials`` as Nango holds them now (read, used for the identity proof, dropped)."""
    body = _call(
        "GET",
        f"/connections/{quote(connection_id, safe='')}",
        params={"provider_config_key": integration_id, "force_refresh": "false", "refresh_token": "false"},
    )
    credentials = body.get("credentials")
    if not isinstance(credentials, dict):
        raise NangoError(200, "malformed", "no credentials in the connection")
    return credentials
