"""A local, protocol-faithful stand-in for the parts of Nango's API Revive and the lab use.

Built from Nango's public API and Node SDK (``@nangohq/node``): the same paths, bodies and webhook signature.

- ``POST /connect/sessions/reconnect`` ``{"connection_id", "integration_id"}`` → 201 ``{"data": {"token", "expires_at"}}``
- ``GET /connect/?session_token=…``: the Connect UI. It sends the person to the upstream provider (the lab identity
  provider, authorization code + PKCE), takes the code back at ``/oauth/callback``, exchanges it, stores the new
  grant as the connection's credentials (whoever signed in: like Nango) and sends the ``auth``/``override`` webhook.
- ``GET /connections/{id}?provider_config_key=…&force_refresh=…`` → the connection with ``credentials`` (``type``
  ``OAUTH2``, ``access_token``, ``expires_at``, ``raw``: the provider's token response). A refresh the provider
  refuses answers 400 ``refresh_token_external_error`` carrying the provider's body, and sends the ``refresh``
  webhook with ``success: false``; the next successful refresh sends ``success: true``.
- Webhooks: ``POST`` of the JSON body to the configured URL with ``X-Nango-Hmac-Sha256`` = hex HMAC-SHA256 of the
  raw body keyed with the webhook signing key; a non-2xx delivery is retried twice (100 ms apart), as Nango does.

Every API call needs ``Authorization: Bearer <secret key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx

from .broker_standin import BrokerStandIn, StandInHandler, expiry

INTEGRATION = "lab-idp"
PROVIDER = "lab-oidc"
REFRESH_FAILED = "The external API returned an error when trying to refresh the access token. Please try again later."


def sign(key: str, raw: bytes) -> str:
    return hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()


class NangoHandler(StandInHandler):
    def authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.standin.secret_key}":
            self.json(401, {"error": {"code": "unknown_account", "message": "Authentication failed."}})
            return False
        return True

    def do_POST(self):
        nango = self.standin
        if urlsplit(self.path).path != "/connect/sessions/reconnect":
            return self.json(404, {"error": {"code": "not_found", "message": "Unknown route."}})
        if not self.authorized():
            return None
        body = self.body()
        key = (str(body.get("integration_id", "")), str(body.get("connection_id", "")))
        if key not in nango.connections:
            return self.json(400, {"error": {"code": "invalid_body", "message": "Connection not found."}})
        token = "nango_connect_session_" + secrets.token_hex(32)
        expires = datetime.now(UTC) + timedelta(minutes=30)
        with nango._lock:
            nango.sessions[token] = {"integration": key[0], "connection_id": key[1], "expires": expires}
        return self.json(201, {"data": {"token": token, "expires_at": expires.isoformat()}})

    def do_GET(self):
        nango = self.standin
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path.startswith(("/connections/", "/connection/")):
            if not self.authorized():
                return None
            key = (query.get("provider_config_key", ""), parts.path.split("/", 2)[2])
            if key not in nango.connections:
                return self.json(404, {"error": {"code": "unknown_connection", "message": "Connection not found."}})
            if query.get("force_refresh") == "true":
                status, error = nango.refresh(*key)
                if status != 200:
                    return self.json(status, error)
            with nango._lock:
                conn = json.loads(json.dumps(nango.connections[key]))
            conn.pop("failed", None)
            if query.get("refresh_token") != "true":
                conn["credentials"].pop("refresh_token", None)
            return self.json(200, conn)
        if parts.path in ("/connect", "/connect/"):
            with nango._lock:
                session = nango.sessions.get(query.get("session_token", ""))
            if session is None or session["expires"] < datetime.now(UTC):
                return self.page(401, "Session expired", "This connect session is not valid any more.")
            return self.redirect(nango.authorize_url({**session, "token": query["session_token"]}))
        if parts.path == "/oauth/callback":
            done = nango.exchange(query)
            if done is None:
                return self.page(400, "Connection failed", "The sign-in did not complete.")
            carry, token = done
            nango.store(carry["integration"], carry["connection_id"], token)
            with nango._lock:
                nango.sessions.pop(carry["token"], None)
            nango.send_webhook(nango.auth_event("override", carry["integration"], carry["connection_id"], success=True))
            return self.page(
                200, "Connection updated", "You can close this window and return to the page you came from."
            )
        return self.json(404, {"error": {"code": "not_found", "message": "Unknown route."}})


class NangoStandIn(BrokerStandIn):
    name = "Nango"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, secret_key: str = "", signing_key: str = "") -> None:
        super().__init__(handler=NangoHandler, host=host, port=port)
        self.secret_key = secret_key or "nango_sk_" + secrets.token_hex(16)
        self.signing_key = signing_key or "nango_whsk_" + secrets.token_hex(16)
        self.webhook_url = ""
        self.connections: dict[tuple[str, str], dict] = {}
        self.sessions: dict[str, dict] = {}
        self.deliveries: list[dict] = []

    @property
    def connect_url(self) -> str:
        return f"{self.url}/connect"

    # -- the lab's handles ----------------------------------------------------------------

    def connect(self, connection_id: str, username: str, integration: str = INTEGRATION) -> None:
        """The connection's first grant, as Nango's Connect UI would have made it for ``username``."""
        self.store(integration, connection_id, self.idp.connect(username, self.callback_url))
        self.send_webhook(self.auth_event("creation", integration, connection_id, success=True))

    def credentials(self, connection_id: str, integration: str = INTEGRATION) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.connections[(integration, connection_id)]["credentials"]))

    def refresh_token(self, connection_id: str, integration: str = INTEGRATION) -> str:
        return self.credentials(connection_id, integration)["refresh_token"]

    def store(self, integration: str, connection_id: str, token: dict) -> None:
        with self._lock:
            self.connections[(integration, connection_id)] = {
                "id": len(self.connections) + 1,
                "connection_id": connection_id,
                "provider_config_key": integration,
                "provider": PROVIDER,
                "created_at": datetime.now(UTC).isoformat(),
                "failed": False,
                "credentials": {
                    "type": "OAUTH2",
                    "access_token": token["access_token"],
                    "refresh_token": token.get("refresh_token", ""),
                    "expires_at": expiry(token),
                    "raw": dict(token),
                },
            }

    def auth_event(
        self, operation: str, integration: str, connection_id: str, *, success: bool, error: dict | None = None
    ) -> dict:
        event = {
            "from": "nango",
            "type": "auth",
            "operation": operation,
            "connectionId": connection_id,
            "providerConfigKey": integration,
            "provider": PROVIDER,
            "environment": "dev",
            "authMode": "OAUTH2",
            "success": success,
            "endUser": {"endUserId": connection_id},
        }
        if error:
            event["error"] = error
        return event

    def send_webhook(self, event: dict) -> int | None:
        """Deliver one webhook signed as Nango signs it; retried twice on a non-2xx answer, 100 ms apart."""
        if not self.webhook_url:
            return None
        raw = json.dumps(event).encode()
        headers = {"Content-Type": "application/json", "X-Nango-Hmac-Sha256": sign(self.signing_key, raw)}
        status = None
        for _ in range(3):
            try:
                status = httpx.post(self.webhook_url, content=raw, headers=headers, timeout=20).status_code
            except httpx.HTTPError:
                status = None
            if status is not None and 200 <= status < 300:
                break
            time.sleep(0.1)
        with self._lock:
            self.deliveries.append({"event": event, "status": status})
        return status

    def refresh(self, integration: str, connection_id: str) -> tuple[int, dict]:
        """Refresh at the provider as Nango does; a refusal is Nango's error with the provider's body inside."""
        with self._lock:
            conn = self.connections[(integration, connection_id)]
            refresh = conn["credentials"]["refresh_token"]
        ok, token = self.refresh_at_provider(refresh)
        if not ok:
            with self._lock:
                conn["failed"] = True
            self.send_webhook(
                self.auth_event(
                    "refresh",
                    integration,
                    connection_id,
                    success=False,
                    error={
                        "type": "refresh_token_external_error",
                        "description": f"{REFRESH_FAILED} {json.dumps(token)}",
                    },
                )
            )
            return 400, {
                "error": {
                    "code": "refresh_token_external_error",
                    "message": REFRESH_FAILED,
                    "payload": {"dataMessage": token},
                }
            }
        with self._lock:
            was_failed, conn["failed"] = conn["failed"], False
            conn["credentials"].update(
                access_token=token["access_token"],
                refresh_token=token.get("refresh_token") or refresh,
                expires_at=expiry(token),
                raw=dict(token),
            )
        if was_failed:
            self.send_webhook(self.auth_event("refresh", integration, connection_id, success=True))
        return 200, {}
