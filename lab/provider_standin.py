"""A small local HTTP service standing in for a provider: a token endpoint and a mail API.

- ``POST /oauth2/v2.0/token`` answers a fresh access token, or, once the grant is revoked,
  the provider's documented error body (Microsoft Entra ``AADSTS700082`` by default).
- ``POST /v1.0/me/sendMail`` accepts a message and counts it -- every one, duplicates included:
  it is the sink that proves (or disproves) at-most-once. ``GET /v1.0/me/messages?idempotencyKey=``
  finds a message by the idempotency key it was sent with.
- ``timeout_after_accept`` makes the mail API accept a message and then not answer in time
  (``timeouts_left`` limits it to the next N messages).
- ``revoke(refresh_token)`` makes the token endpoint refuse that one refresh token (a new grant's works).
- ``rotating=True``: refresh tokens rotate as Auth0's do: each refresh answers a new refresh token and retires the
  one presented; presenting a retired one again is reuse ("Reused rotating refresh token detected"): the whole
  family is revoked and the endpoint answers ``invalid_grant``. ``issue_refresh_token()`` starts a family;
  ``refreshes`` counts successful refreshes, ``reuse_detected`` the reuses; ``token_delay`` slows the endpoint.
- ``cae_revoke(refresh_token)`` is a continuous access evaluation event (Microsoft Graph revoking a session mid-run):
  the mail API answers every access token minted from that refresh token with 401 and
  ``WWW-Authenticate: Bearer … error="insufficient_claims", claims="<base64 JSON>"``, the claims asking for a token
  issued after the event (``nbf``); tokens of a new sign-in work. With ``at="token"`` the token endpoint itself
  refuses that refresh token with Entra's ``interaction_required`` body carrying the ``claims`` to sign in with.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, urlsplit

ERROR_BODIES = {
    "entra": (
        400,
        {
            "error": "invalid_grant",
            "error_description": "AADSTS700082: The refresh token has expired due to inactivity. The token was issued on "
            "2026-05-09T10:00:00Z and was inactive for 90.00:00:00.",
            "error_codes": [700082],
            "timestamp": "2026-11-21 10:07:19Z",
            "trace_id": "0b9c1c5e-2b4c-4a9e-9a1c-5f0d2e7c8a11",
            "correlation_id": "6f27bbf4-582a-438c-9d1e-0a4b5c6d7e8f",
        },
    ),
    "auth0": (403, {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
    "oidc": (400, {"error": "invalid_grant", "error_description": "The refresh token is invalid or has been revoked."}),
}


class ProviderStandIn:
    def __init__(
        self, *, provider: str = "entra", host: str = "127.0.0.1", port: int = 0, rotating: bool = False
    ) -> None:
        self.provider = provider
        self.rotating = rotating
        self.token_delay = 0.0
        self.refreshes = 0
        self.reuse_detected = 0
        self.family_of: dict[str, str] = {}
        self.retired: set[str] = set()
        self.revoked_families: set[str] = set()
        self.revoked = False
        self.timeout_after_accept: float = 0.0
        self.timeouts_left: int | None = None
        self.revoked_tokens: set[str] = set()
        self.messages: list[dict] = []
        self.token_requests = 0
        self.minted_from: dict[str, str] = {}
        self.cae_revoked: dict[str, str] = {}
        self.cae_at_token: dict[str, str] = {}
        self.challenges = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda *args: None  # a client that timed out and left is part of the lab
        self._thread = threading.Thread(target=self._server.serve_forever, name="provider-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ProviderStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self.revoked_tokens.add(refresh_token)

    def issue_refresh_token(self) -> str:
        """A new grant's refresh token (the start of a rotation family)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self.family_of[token] = token
        return token

    def _rotate(self, refresh_token: str) -> tuple[str | None, bool]:
        """(the next refresh token, or None if refused; whether this was a reuse)."""
        with self._lock:
            family = self.family_of.get(refresh_token)
            if family is None or family in self.revoked_families:
                return None, False
            if refresh_token in self.retired:
                self.revoked_families.add(family)
                self.reuse_detected += 1
                return None, True
            self.retired.add(refresh_token)
            successor = secrets.token_urlsafe(32)
            self.family_of[successor] = family
            return successor, False

    def cae_revoke(self, refresh_token: str, *, at: str = "resource") -> str:
        """A critical event for the session of ``refresh_token``; returns the claims (JSON text) it will ask for."""
        claims = json.dumps(
            {"access_token": {"nbf": {"essential": True, "value": str(int(time.time()))}}}, separators=(",", ":")
        )
        with self._lock:
            (self.cae_at_token if at == "token" else self.cae_revoked)[refresh_token] = claims
        return claims

    def _cae_challenge(self, authorization: str) -> str | None:
        """The WWW-Authenticate challenge for a bearer token whose session was revoked, else None."""
        token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        with self._lock:
            claims = self.cae_revoked.get(self.minted_from.get(token, ""))
            if claims is None:
                return None
            self.challenges += 1
        encoded = base64.b64encode(claims.encode()).decode()
        return (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
            f'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="{encoded}"'
        )

    def time_out_next(self, seconds: float, count: int = 1) -> None:
        """Accept the next ``count`` messages, then answer only after ``seconds``."""
        with self._lock:
            self.timeout_after_accept, self.timeouts_left = seconds, count

    def messages_for(self, run_id: str) -> list[dict]:
        with self._lock:
            return [dict(m) for m in self.messages if m.get("run_id") == run_id]

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.messages)

    def duplicate_effects(self) -> int:
        """Messages accepted beyond the first for each idempotency key."""
        with self._lock:
            keys = [m["idempotency_key"] for m in self.messages]
        return len(keys) - len(set(keys))

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the terminal for the timeline
                pass

            def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                    return dict(parse_qsl(raw.decode(errors="replace")))
                try:
                    return json.loads(raw or b"{}")
                except ValueError:
                    return {}

            def do_POST(self):
                path = urlsplit(self.path).path
                if path == "/oauth2/v2.0/token":
                    form = self._body()
                    refresh_token = form.get("refresh_token", "")
                    with standin._lock:
                        standin.token_requests += 1
                        refused = standin.revoked or refresh_token in standin.revoked_tokens
                        claims = standin.cae_at_token.get(refresh_token)
                    if refused:
                        status, body = ERROR_BODIES.get(standin.provider, ERROR_BODIES["oidc"])
                        return self._json(status, body)
                    if standin.token_delay:
                        time.sleep(standin.token_delay)
                    successor = None
                    if standin.rotating:
                        successor, reused = standin._rotate(refresh_token)
                        if successor is None:
                            return self._json(
                                403,
                                {
                                    "error": "invalid_grant",
                                    "error_description": "Unknown or invalid refresh token."
                                    if not reused
                                    else "Reused rotating refresh token detected.",
                                },
                            )
                    if claims is not None:
                        return self._json(
                            400,
                            {
                                "error": "interaction_required",
                                "error_description": "AADSTS50076: Due to a configuration change made by your administrator, "
                                "or because you moved to a new location, you must use multi-factor "
                                "authentication to access the resource.",
                                "error_codes": [50076],
                                "suberror": "basic_action",
                                "claims": claims,
                            },
                        )
                    access_token = secrets.token_urlsafe(24)
                    with standin._lock:
                        standin.minted_from[access_token] = refresh_token
                        standin.refreshes += 1
                    answer = {"token_type": "Bearer", "expires_in": 3600, "access_token": access_token}
                    if successor:
                        answer["refresh_token"] = successor
                    return self._json(200, answer)
                if path == "/v1.0/me/sendMail":
                    if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                        return self._json(
                            401, {"error": {"code": "InvalidAuthenticationToken", "message": "Access token is empty."}}
                        )
                    challenge = standin._cae_challenge(self.headers.get("Authorization") or "")
                    if challenge is not None:
                        return self._json(
                            401,
                            {
                                "error": {
                                    "code": "InvalidAuthenticationToken",
                                    "message": "Continuous access evaluation resulted in challenge "
                                    "with result: InteractionRequired and code: "
                                    "TokenIssuedBeforeRevocationTimestamp",
                                }
                            },
                            headers={"WWW-Authenticate": challenge},
                        )
                    body = self._body()
                    key = self.headers.get("Idempotency-Key") or ""
                    with standin._lock:
                        message = {
                            "id": f"AAMk{len(standin.messages) + 1:04d}",
                            "idempotency_key": key,
                            "subject": body.get("subject", ""),
                            "to": body.get("to", ""),
                            "run_id": body.get("run_id", ""),
                            "generation": body.get("generation"),
                            "pid": body.get("pid"),
                            "at": time.time(),
                        }
                        standin.messages.append(message)
                        delay = standin.timeout_after_accept
                        if delay and standin.timeouts_left is not None:
                            if standin.timeouts_left <= 0:
                                delay = 0.0
                            else:
                                standin.timeouts_left -= 1
                    if delay:
                        time.sleep(delay)
                    return self._json(202, message)
                return self._json(404, {"error": "not_found"})

            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/v1.0/me/messages":
                    key = parse_qs(parts.query).get("idempotencyKey", [""])[0]
                    with standin._lock:
                        found = [m for m in standin.messages if m["idempotency_key"] == key]
                    return self._json(200, {"value": found})
                return self._json(404, {"error": "not_found"})

        return Handler
