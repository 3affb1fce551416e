"""Which allauth app signs in a connection's owner (see ``reauth.provider_settings``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from allauth.socialaccount.adapter import get_adapter

from .errors import ReconnectProviderNotConfigured
from .identity import rule_for


@dataclass(frozen=True)
class SignInApp:
    provider_id: str
    name: str
    rule: str
    issuer: str
    exact: bool


def _norm(value: str) -> str:
    return (value or "").strip().rstrip("/").lower()


def sign_in_apps(request, connection) -> list[SignInApp]:
    """Every configured app that serves this connection, exact matches first."""
    found: list[SignInApp] = []
    for app in get_adapter(request).list_apps(request):
        revive = (app.settings or {}).get("revive") or {}
        for serve in revive.get("serves") or []:
            if serve.get("provider") != connection.provider:
                continue
            if connection.provider == "entra":
                want, have = serve.get("tenant", "*"), connection.provider_tenant
            else:
                want, have = serve.get("issuer", "*"), connection.provider_issuer
            if want != "*" and _norm(want) != _norm(have):
                continue
            found.append(
                SignInApp(
                    provider_id=app.provider_id or app.provider,
                    name=app.name or app.provider,
                    rule=rule_for(connection.provider),
                    issuer=serve.get("issuer", "") if serve.get("issuer", "*") != "*" else "",
                    exact=want != "*",
                )
            )
    found.sort(key=lambda a: not a.exact)
    return found


def sign_in_app_for(request, connection) -> SignInApp:
    apps = sign_in_apps(request, connection)
    if not apps:
        raise ReconnectProviderNotConfigured(data={"provider": connection.provider})
    return apps[0]


def merge_claims(*requests: str) -> str:
    """Merge OIDC claims requests (JSON objects, OIDC Core §5.5), later ones winning per claim; '' if none."""
    merged: dict[str, Any] = {}
    for text in requests:
        try:
            request = json.loads(text) if text else {}
        except ValueError:
            continue
        if not isinstance(request, dict):
            continue
        for target, claims in request.items():
            if isinstance(claims, dict) and isinstance(merged.get(target), dict):
                merged[target] = {**merged[target], **claims}
            else:
                merged[target] = claims
    return json.dumps(merged, separators=(",", ":"), sort_keys=True) if merged else ""


def sign_in_auth_params(provider, connection, case) -> dict[str, str]:
    """The authorization parameters of the owner's sign-in: the app's own (from its provider settings), the
    owner's address as ``login_hint``, and, for Entra, the case's claims challenge merged into the app's claims
    request (continuous access evaluation: the new token must satisfy what the resource API asked for)."""
    params = dict(provider.get_auth_params())
    if connection.owner_email:
        params.setdefault("login_hint", connection.owner_email)
    challenge = (case.provider_error or {}).get("claims", "") if connection.provider == "entra" else ""
    if challenge:
        params["claims"] = merge_claims(params.get("claims", ""), challenge)
    return params


def sign_in_app_by_id(request, connection, provider_id: str) -> SignInApp | None:
    return next((a for a in sign_in_apps(request, connection) if a.provider_id == provider_id), None)
