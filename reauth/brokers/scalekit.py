"""Scalekit connected accounts, as far as Revive uses them (REST over httpx).

* ``POST /oauth/token`` (client credentials) → an environment access token for the calls below.
* ``GET /api/v1/connected_accounts/auth?connector=…&identifier=…`` → ``{"connected_account": {"id", "status",
  "authorization_details": {"oauth_token": {"access_token", …}}}}``.
* ``POST /api/v1/connected_accounts/magic_link`` ``{"connector", "identifier"}`` → ``{"link", "expiry"}``.

Status ``ACTIVE`` is the only usable one (``EXPIRED``, ``PENDING_AUTH``, ``PENDING_VERIFICATION``, ``DISCONNECTED``,
``REVOKED``, ``ERROR`` are not). Scalekit documents no expiry webhook, so ``services.scalekit_accounts_poll`` (Celery beat) reads the
status of every registered Scalekit connection, a bounded batch per run, backing off per account after errors.
"""

from __future__ import annotations

from typing import Any

import httpx
from django.conf import settings
from django.core.cache import cache

from cases.models import Connection

from . import BrokerError


class ScalekitError(BrokerError):
    broker = "scalekit"


def _base() -> str:
    return settings.REVIVE_SCALEKIT_ENVIRONMENT_URL.rstrip("/")


def configured() -> bool:
    """A Scalekit environment is configured (``REVIVE_SCALEKIT_ENVIRONMENT_URL``)."""
    return bool(_base())


def _token() -> str:
    cached = cache.get("revive:scalekit:token")
    if cached:
        return cached
    try:
        response = httpx.post(
            f"{_base()}/oauth/token",
            timeout=settings.REVIVE_BROKER_TIMEOUT,
            data={
                "grant_type": "client_credentials",
                "client_id": settings.REVIVE_SCALEKIT_CLIENT_ID,
                "client_secret": settings.REVIVE_SCALEKIT_CLIENT_SECRET,
            },
        )
    except httpx.HTTPError as exc:
        raise ScalekitError(None, "network", type(exc).__name__) from None
    if response.status_code != 200:
        raise ScalekitError(response.status_code, "token", "client credentials refused")
    body = response.json()
    cache.set("revive:scalekit:token", body["access_token"], max(int(body.get("expires_in") or 300) - 60, 30))
    return body["access_token"]


def _call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = httpx.request(
            method,
            f"{_base()}{path}",
            timeout=settings.REVIVE_BROKER_TIMEOUT,
            headers={"Authorization": f"Bearer {_token()}"},
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise ScalekitError(None, "network", type(exc).__name__) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        raise ScalekitError(
            response.status_code,
            str(body.get("error_code") or body.get("code") or ""),
            str(body.get("message") or "")[:200],
        )
    return body


def account_read(conn: Connection) -> dict[str, Any]:
    params = {"connector": conn.broker_integration, "identifier": conn.broker_connection}
    if conn.broker_account:
        params["id"] = conn.broker_account
    account = _call("GET", "/api/v1/connected_accounts/auth", params=params).get("connected_account")
    if not isinstance(account, dict):
        raise ScalekitError(200, "malformed", "no connected_account in the answer")
    return account


def account_credentials(conn: Connection) -> dict[str, Any]:
    """The OAuth token Scalekit holds for the account, shaped like Nango's credentials (``access_token``, ``raw``)."""
    details = (account_read(conn).get("authorization_details") or {}).get("oauth_token") or {}
    return {
        "access_token": details.get("access_token", ""),
        "raw": {k: v for k, v in details.items() if k == "id_token"},
    }


def magic_link(conn: Connection) -> str:
    body = _call(
        "POST",
        "/api/v1/connected_accounts/magic_link",
        json={"connector": conn.broker_integration, "identifier": conn.broker_connection},
    )
    if not body.get("link"):
        raise ScalekitError(200, "malformed", "no link in the answer")
    return body["link"]
