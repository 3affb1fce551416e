"""A local stand-in for the parts of Scalekit's connected-accounts API Revive and the lab use.

- ``POST /oauth/token`` (client credentials) → an environment access token.
- ``GET /api/v1/connected_accounts/auth?connector=…&identifier=…`` → ``{"connected_account": {"id", "connector",
  "identifier", "status", "authorization_details": {"oauth_token": {"access_token", "refresh_token", "id_token",
  "scopes"}}}}``; with ``refresh=true`` the stand-in first refreshes at the provider, as Scalekit does before it hands
  out a token, and a refused refresh turns the account ``EXPIRED``.
- ``POST /api/v1/connected_accounts/magic_link`` ``{"connector", "identifier"}`` → ``{"link", "expiry"}``; the link
  sends the person to the provider and stores whatever grant comes back; the account is ``ACTIVE`` again.

Scalekit documents no expiry webhook: Revive polls the status.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from .broker_standin import BrokerStandIn, StandInHandler, expiry

CONNECTOR = "lab-idp"


class ScalekitHandler(StandInHandler):
    def authorized(self) -> bool:
        if self.headers.get("Authorization") not in {f"Bearer {t}" for t in self.standin.issued}:
            self.json(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid token."})
            return False
        return True

    def do_POST(self):
        sk = self.standin
        path = urlsplit(self.path).path
        if path == "/oauth/token":
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
                "client_credentials",
                sk.client_id,
                sk.client_secret,
            ):
                return self.json(401, {"error": "invalid_client"})
            token = "sk_env_" + secrets.token_hex(16)
            sk.issued.add(token)
            return self.json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
        if path == "/api/v1/connected_accounts/magic_link":
            if not self.authorized():
                return None
            body = self.body()
            key = (str(body.get("connector", "")), str(body.get("identifier", "")))
            if key not in sk.accounts:
                return self.json(404, {"error_code": "NOT_FOUND", "message": "Connected account not found."})
            token = secrets.token_urlsafe(24)
            expires = datetime.now(UTC) + timedelta(minutes=15)
            with sk._lock:
                sk.links[token] = {"key": key, "expires": expires}
            return self.json(200, {"link": f"{sk.url}/magic/{token}", "expiry": expires.isoformat()})
        return self.json(404, {"error_code": "NOT_FOUND", "message": "Unknown route."})

    def do_GET(self):
        sk = self.standin
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/api/v1/connected_accounts/auth":
            if not self.authorized():
                return None
            key = (query.get("connector", ""), query.get("identifier", ""))
            if key not in sk.accounts:
                return self.json(404, {"error_code": "NOT_FOUND", "message": "Connected account not found."})
            if query.get("refresh") == "true":
                sk.refresh(key)
            return self.json(200, {"connected_account": sk.account(key)})
        if parts.path.startswith("/magic/"):
            with sk._lock:
                link = sk.links.get(parts.path.rsplit("/", 1)[1])
            if link is None or link["expires"] < datetime.now(UTC):
                return self.page(410, "Link expired", "Ask for a new link.")
            return self.redirect(sk.authorize_url({"key": list(link["key"])}))
        if parts.path == "/oauth/callback":
            done = sk.exchange(query)
            if done is None:
                return self.page(400, "Connection failed", "The sign-in did not complete.")
            carry, token = done
            sk.store(tuple(carry["key"]), token)
            return self.page(
                200, "Account connected", "You can close this window and return to the page you came from."
            )
        return self.json(404, {"error_code": "NOT_FOUND", "message": "Unknown route."})


class ScalekitStandIn(BrokerStandIn):
    name = "Scalekit"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, client_id: str = "", client_secret: str = "") -> None:
        super().__init__(handler=ScalekitHandler, host=host, port=port)
        self.client_id = client_id or "skc_" + secrets.token_hex(8)
        self.client_secret = client_secret or "sks_" + secrets.token_hex(16)
        self.issued: set[str] = set()
        self.accounts: dict[tuple[str, str], dict] = {}
        self.links: dict[str, dict] = {}

    def connect(self, identifier: str, username: str, connector: str = CONNECTOR) -> None:
        self.store((connector, identifier), self.idp.connect(username, self.callback_url))

    def store(self, key: tuple[str, str], token: dict) -> None:
        with self._lock:
            previous = self.accounts.get(key)
            self.accounts[key] = {
                "id": previous["id"] if previous else "ca_" + secrets.token_hex(8),
                "connector": key[0],
                "identifier": key[1],
                "status": "ACTIVE",
                "updated_at": datetime.now(UTC).isoformat(),
                "token_expires_at": expiry(token),
                "authorization_details": {
                    "oauth_token": {
                        "access_token": token["access_token"],
                        "refresh_token": token.get("refresh_token", ""),
                        "id_token": token.get("id_token", ""),
                        "scopes": (token.get("scope") or "").split(),
                    }
                },
            }

    def account(self, key: tuple[str, str]) -> dict:
        with self._lock:
            return json.loads(json.dumps(self.accounts[key]))

    def refresh_token(self, identifier: str, connector: str = CONNECTOR) -> str:
        return self.account((connector, identifier))["authorization_details"]["oauth_token"]["refresh_token"]

    def refresh(self, key: tuple[str, str]) -> str:
        """Scalekit's own refresh of an account's token; a refusal turns the account ``EXPIRED``. Returns the status."""
        account = self.account(key)
        if account["status"] != "ACTIVE":
            return account["status"]
        ok, token = self.refresh_at_provider(account["authorization_details"]["oauth_token"]["refresh_token"])
        with self._lock:
            stored = self.accounts[key]
            if not ok:
                stored["status"] = "EXPIRED"
            else:
                details = stored["authorization_details"]["oauth_token"]
                details.update(
                    access_token=token["access_token"],
                    refresh_token=token.get("refresh_token") or details["refresh_token"],
                )
                stored["token_expires_at"] = expiry(token)
            stored["updated_at"] = datetime.now(UTC).isoformat()
            return stored["status"]
