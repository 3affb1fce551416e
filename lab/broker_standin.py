"""What the lab's broker stand-ins share: an HTTP server thread, JSON and page answers, and the upstream sign-in.

A broker (Nango, Scalekit) re-authorizes a connection by sending the person to the upstream provider -- here the lab
identity provider, authorization code + PKCE -- and storing whatever grant comes back, for whoever signed in.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

import httpx


class StandInHandler(BaseHTTPRequestHandler):
    standin: BrokerStandIn

    def log_message(self, *args):
        pass

    def send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def json(self, status: int, body: dict) -> None:
        self.send(status, json.dumps(body).encode(), "application/json")

    def page(self, status: int, title: str, text: str) -> None:
        body = (
            f"<!doctype html><html><head><title>{html.escape(title)} · {self.standin.name} (lab stand-in)</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
        ).encode()
        self.send(status, body, "text/html; charset=utf-8")

    def redirect(self, location: str) -> None:
        self.send(302, b"", "text/plain", {"Location": location})

    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            value = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class BrokerStandIn:
    name = "broker"

    def __init__(self, *, handler: type[StandInHandler], host: str = "127.0.0.1", port: int = 0) -> None:
        self.idp = None  # the upstream provider (lab.idp.driver.LabIdp or the tests' LabIdp), set once it runs
        self.pending: dict[str, dict] = {}
        self._lock = threading.Lock()
        handler = type(handler.__name__, (handler,), {"standin": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda *args: None
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def callback_url(self) -> str:
        return f"{self.url}/oauth/callback"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the upstream sign-in ----------------------------------------------------------------

    def authorize_url(self, carry: dict) -> str:
        """Where to send the person: the provider's authorization endpoint, remembering ``carry`` for the callback."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        with self._lock:
            self.pending[state] = {**carry, "verifier": verifier}
        return f"{self.idp.url}/identity/o/authorize?" + urlencode(
            {
                "response_type": "code",
                "client_id": self.idp.client_id,
                "redirect_uri": self.callback_url,
                "scope": "openid profile email",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )

    def exchange(self, query: dict) -> tuple[dict, dict] | None:
        """The provider came back: exchange the code; ``(carry, token response)`` or ``None``."""
        with self._lock:
            carry = self.pending.pop(query.get("state", ""), None)
        if carry is None or "code" not in query:
            return None
        resp = httpx.post(
            self.idp.token_url,
            timeout=10,
            data={
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": self.callback_url,
                "client_id": self.idp.client_id,
                "client_secret": self.idp.client_secret,
                "code_verifier": carry["verifier"],
            },
        )
        return (carry, resp.json()) if resp.status_code == 200 else None

    def refresh_at_provider(self, refresh_token: str) -> tuple[bool, dict]:
        """Refresh a grant at the provider: ``(True, token response)`` or ``(False, the provider's error body)``."""
        resp = httpx.post(
            self.idp.token_url,
            timeout=10,
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.idp.client_id,
                "client_secret": self.idp.client_secret,
            },
        )
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text[:200]}
        return resp.status_code == 200, body


def expiry(token: dict) -> str:
    return (datetime.now(UTC) + timedelta(seconds=int(token.get("expires_in") or 3600))).isoformat()
