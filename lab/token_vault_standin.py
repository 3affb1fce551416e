"""A local stand-in for Auth0 Token Vault and the My Account API's Connected Accounts, built from their documented
shapes, with an upstream provider (a "Google") behind it.

Auth0 (``/oauth/token``):

- the federated-connection token exchange (``grant_type=urn:auth0:params:oauth:grant-type:token-exchange:
  federated-connection-access-token``, ``subject_token`` = the user's Auth0 refresh token, ``subject_token_type``,
  ``requested_token_type=http://auth0.com/oauth/token-type/federated-connection-access-token``, ``connection``):
  the upstream access token of the user's connected account; 401 ``federated_connection_refresh_token_not_found``
  once the upstream grant is gone; 403 ``invalid_grant`` "Unknown or invalid refresh token." for a bad subject token;
- ``grant_type=refresh_token`` with ``audience=<url>/me/``: a My Account API access token for the user.

My Account API (``Authorization: Bearer <My Account token>``):

- ``POST /me/v1/connected-accounts/connect`` ``{connection, redirect_uri, state, scopes, code_challenge,
  code_challenge_method: "S256"}`` → ``{connect_uri, auth_session, connect_params: {ticket}, expires_in}``;
- ``GET <connect_uri>?ticket=…``: the upstream provider's sign-in page (pick an account), which sends the browser
  to ``redirect_uri?connect_code=…&state=…``;
- ``POST /me/v1/connected-accounts/complete`` ``{auth_session, connect_code, redirect_uri, code_verifier}`` → 201
  ``{id, connection, access_type, scopes, expires_at}`` (PKCE checked);
- ``DELETE /me/v1/connected-accounts/{id}``.

Upstream: ``GET /upstream/userinfo`` (Bearer upstream access token) → ``{sub, email, name}``; its issuer is
``<url>/upstream``. ``revoke_upstream(user)`` makes the upstream grant of the user's connected account disappear.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

EXCHANGE_GRANT = "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token"
FEDERATED_TOKEN_TYPE = "http://auth0.com/oauth/token-type/federated-connection-access-token"
SUBJECT_TYPES = ("urn:ietf:params:oauth:token-type:refresh_token", "urn:ietf:params:oauth:token-type:access_token")
UPSTREAM_ACCOUNTS = {
    "ada": {"sub": "10769150350006150715113082367", "email": "ada@contoso.example", "name": "Ada Lovelace"},
    "mallory": {"sub": "10769150350006150715113099999", "email": "mallory@contoso.example", "name": "Mallory"},
}


@dataclass
class ConnectedAccount:
    id: str
    user: str
    connection: str
    upstream: str
    alive: bool = True


class TokenVaultStandIn:
    def __init__(self, *, client_id: str = "revive-lab-vault", host: str = "127.0.0.1", port: int = 0) -> None:
        self.client_id = client_id
        self.client_secret = secrets.token_urlsafe(24)
        self.sessions: dict[str, str] = {}  # Auth0 refresh token -> user
        self.me_tokens: dict[str, str] = {}  # My Account access token -> user
        self.upstream_tokens: dict[str, str] = {}  # upstream access token -> upstream account name
        self.accounts: dict[tuple[str, str], ConnectedAccount] = {}
        self.connects: dict[str, dict] = {}  # auth_session -> pending connect
        self.exchanges = 0
        self.exchange_failures = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-vault-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def upstream_issuer(self) -> str:
        return f"{self.url}/upstream"

    def start(self) -> TokenVaultStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- set-up and faults ------------------------------------------------------------------

    def sign_in(self, user: str, *, connection: str, upstream: str) -> str:
        """The user's Auth0 session (its refresh token) with ``upstream`` connected on ``connection``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.sessions[token] = user
            self.accounts[(user, connection)] = ConnectedAccount(
                f"cac_{secrets.token_hex(8)}", user, connection, upstream
            )
        return token

    def revoke_upstream(self, user: str, connection: str) -> None:
        """The upstream grant behind the connected account is gone (revoked at Google, expired, ...)."""
        with self._lock:
            self.accounts[(user, connection)].alive = False

    def connected(self, user: str, connection: str) -> ConnectedAccount | None:
        with self._lock:
            return self.accounts.get((user, connection))

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self):
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, body: dict) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _form(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode(errors="replace") if length else ""
                if "json" in (self.headers.get("Content-Type") or ""):
                    try:
                        return json.loads(raw or "{}")
                    except ValueError:
                        return {}
                return dict(parse_qsl(raw))

            def _bearer(self, table: dict) -> str | None:
                auth = self.headers.get("Authorization") or ""
                with vault._lock:
                    return table.get(auth[7:]) if auth.startswith("Bearer ") else None

            def do_POST(self):
                path = urlsplit(self.path).path
                if path == "/oauth/token":
                    return self._token(self._form())
                if path == "/me/v1/connected-accounts/connect":
                    return self._connect(self._form())
                if path == "/me/v1/connected-accounts/complete":
                    return self._complete(self._form())
                if path == "/upstream/authorize":
                    return self._upstream_consent(self._form())
                return self._json(404, {"error": "not_found"})

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/upstream/authorize":
                    return self._upstream_page(parse_qs(parts.query).get("ticket", [""])[0])
                if parts.path == "/upstream/userinfo":
                    name = self._bearer(vault.upstream_tokens)
                    if name is None:
                        return self._json(401, {"error": "invalid_token"})
                    return self._json(200, UPSTREAM_ACCOUNTS[name])
                return self._json(404, {"error": "not_found"})

            def do_DELETE(self):
                path = urlsplit(self.path).path
                user = self._bearer(vault.me_tokens)
                if user is None:
                    return self._json(401, {"error": "invalid_token"})
                account_id = path.rsplit("/", 1)[-1]
                with vault._lock:
                    found = [k for k, a in vault.accounts.items() if a.id == account_id and a.user == user]
                    for key in found:
                        del vault.accounts[key]
                return self._send(204, b"", "application/json") if found else self._json(404, {"error": "not_found"})

            # -- /oauth/token --------------------------------------------------------------

            def _token(self, form: dict) -> None:
                if form.get("client_id") != vault.client_id or form.get("client_secret") != vault.client_secret:
                    return self._json(
                        401, {"error": "invalid_client", "error_description": "Client authentication failed."}
                    )
                with vault._lock:
                    user = vault.sessions.get(form.get("subject_token") or form.get("refresh_token") or "")
                if form.get("grant_type") == "refresh_token":
                    if user is None:
                        return self._json(
                            403, {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}
                        )
                    if form.get("audience", "").rstrip("/") != f"{vault.url}/me":
                        return self._json(403, {"error": "access_denied", "error_description": "Service not found"})
                    token = secrets.token_urlsafe(24)
                    with vault._lock:
                        vault.me_tokens[token] = user
                    return self._json(
                        200,
                        {
                            "access_token": token,
                            "token_type": "Bearer",
                            "expires_in": 600,
                            "scope": form.get("scope", ""),
                        },
                    )
                if form.get("grant_type") != EXCHANGE_GRANT:
                    return self._json(400, {"error": "unsupported_grant_type"})
                with vault._lock:
                    vault.exchanges += 1
                if (
                    form.get("subject_token_type") not in SUBJECT_TYPES
                    or form.get("requested_token_type") != FEDERATED_TOKEN_TYPE
                    or not form.get("connection")
                ):
                    return self._json(
                        400, {"error": "invalid_request", "error_description": "Invalid token exchange request."}
                    )
                if user is None:
                    return self._json(
                        403, {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}
                    )
                with vault._lock:
                    account = vault.accounts.get((user, form["connection"]))
                    if account is None or not account.alive:
                        vault.exchange_failures += 1
                        return self._json(
                            401,
                            {
                                "error": "federated_connection_refresh_token_not_found",
                                "error_description": "Federated connection Refresh Token not found.",
                            },
                        )
                    token = secrets.token_urlsafe(24)
                    vault.upstream_tokens[token] = account.upstream
                return self._json(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": 3599,
                        "scope": "openid email https://mail.example/send",
                        "issued_token_type": FEDERATED_TOKEN_TYPE,
                    },
                )

            # -- My Account API -------------------------------------------------------------

            def _connect(self, body: dict) -> None:
                user = self._bearer(vault.me_tokens)
                if user is None:
                    return self._json(401, {"error": "invalid_token"})
                needed = ("connection", "redirect_uri", "state", "code_challenge")
                if any(not body.get(k) for k in needed) or body.get("code_challenge_method") != "S256":
                    return self._json(
                        400, {"error": "invalid_request", "error_description": "missing or invalid fields"}
                    )
                auth_session, ticket = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
                with vault._lock:
                    vault.connects[auth_session] = {
                        "user": user,
                        "ticket": ticket,
                        "connection": body["connection"],
                        "redirect_uri": body["redirect_uri"],
                        "state": body["state"],
                        "challenge": body["code_challenge"],
                        "code": None,
                        "scopes": body.get("scopes") or [],
                    }
                return self._json(
                    200,
                    {
                        "connect_uri": f"{vault.url}/upstream/authorize",
                        "auth_session": auth_session,
                        "connect_params": {"ticket": ticket},
                        "expires_in": 300,
                    },
                )

            def _pending_by_ticket(self, ticket: str) -> dict | None:
                with vault._lock:
                    return next((c for c in vault.connects.values() if c["ticket"] == ticket and ticket), None)

            def _upstream_page(self, ticket: str) -> None:
                if self._pending_by_ticket(ticket) is None:
                    return self._send(400, b"<p>Unknown or expired ticket.</p>", "text/html")
                options = "".join(
                    f'<button name="account" value="{html.escape(n)}">{html.escape(a["email"])}</button>'
                    for n, a in UPSTREAM_ACCOUNTS.items()
                )
                page = (
                    f"<!doctype html><title>Upstream sign-in</title><h1>Choose an account</h1>"
                    f'<form method="post" action="/upstream/authorize"><input type="hidden" name="ticket" '
                    f'value="{html.escape(ticket)}">{options}</form>'
                )
                return self._send(200, page.encode(), "text/html; charset=utf-8")

            def _upstream_consent(self, form: dict) -> None:
                pending = self._pending_by_ticket(form.get("ticket", ""))
                if pending is None or form.get("account") not in UPSTREAM_ACCOUNTS:
                    return self._send(400, b"<p>Bad request.</p>", "text/html")
                code = secrets.token_urlsafe(24)
                with vault._lock:
                    pending.update(code=code, upstream=form["account"], ticket="")
                location = f"{pending['redirect_uri']}?{urlencode({'connect_code': code, 'state': pending['state']})}"
                return self._send(302, b"", "text/html", {"Location": location})

            def _complete(self, body: dict) -> None:
                user = self._bearer(vault.me_tokens)
                if user is None:
                    return self._json(401, {"error": "invalid_token"})
                with vault._lock:
                    pending = vault.connects.get(body.get("auth_session", ""))
                if (
                    pending is None
                    or pending["user"] != user
                    or not pending["code"]
                    or pending["code"] != body.get("connect_code")
                ):
                    return self._json(
                        400, {"error": "invalid_request", "error_description": "Invalid auth_session or connect_code."}
                    )
                if body.get("redirect_uri") != pending["redirect_uri"]:
                    return self._json(400, {"error": "invalid_request", "error_description": "redirect_uri mismatch."})
                verifier = body.get("code_verifier") or ""
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if challenge != pending["challenge"]:
                    return self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed."})
                account = ConnectedAccount(
                    f"cac_{secrets.token_hex(8)}", user, pending["connection"], pending["upstream"]
                )
                with vault._lock:
                    vault.connects.pop(body["auth_session"], None)
                    vault.accounts[(user, pending["connection"])] = account
                return self._json(
                    201,
                    {
                        "id": account.id,
                        "connection": account.connection,
                        "access_type": "offline",
                        "scopes": pending["scopes"],
                        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)),
                    },
                )

        return Handler
