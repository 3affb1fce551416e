"""Driving the lab identity provider: start it, sign a user in through its real pages, connect, revoke.

The provider is allauth's OpenID Connect server (``lab.idp.process``) on a free
loopback port. ``IdpSession`` is a person at its sign-in page: it follows the
authorization redirects, posts the user name and password, and stops at the first
redirect that leaves the provider (the client's callback), so the caller -- Revive's
owner page, or the lab's initial connect -- takes it from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from ..processes import Pidfile, spawn, stop

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "revive-lab"
PASSWORD = "lab-password-1"
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class IdpError(RuntimeError):
    pass


@dataclass
class LabIdp:
    """A running lab provider process."""

    url: str
    users: dict
    client_secret: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    client_id: str = CLIENT_ID
    issuer: str = ""

    @classmethod
    def start(
        cls, *, var_dir: Path, redirect_uris: list[str], timeout: float = 120.0, children: Pidfile | None = None
    ) -> LabIdp:
        """Start the provider and wait until it serves. Call it from the thread that outlives the provider: the
        process dies with that thread (``lab.processes``). ``children`` records it for the next run's reaper."""
        var_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(24)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO_SETTINGS_MODULE", "REVIVE_IDP_DATABASE_URL"))
        }
        env.update(
            REVIVE_VAR_DIR=str(var_dir),
            REVIVE_LAB_IDP_CLIENT_SECRET=secret,
            PYTHONUNBUFFERED="1",
            REVIVE_IDP_DATABASE_URL=f"sqlite:///{var_dir / 'idp.sqlite3'}",
        )
        args = [sys.executable, "-m", "lab.idp.process", "--client-id", CLIENT_ID]
        for uri in redirect_uris:
            args += ["--redirect-uri", uri]
        log = open(var_dir / "idp.log", "ab")
        process = spawn(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
        log.close()
        if children is not None:
            children.add(process, "lab identity provider")
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            cls._kill(process)
            tail = (var_dir / "idp.log").read_text(errors="replace")[-2000:]
            raise IdpError(f"the lab identity provider did not start (exit {process.poll()}):\n{tail}")
        ready = json.loads(line[0])
        idp = cls(url=ready["url"], users=ready["users"], client_secret=secret, process=process)
        idp.issuer = httpx.get(f"{idp.url}/.well-known/openid-configuration", timeout=10).json()["issuer"]
        return idp

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        stop(process)

    def stop(self) -> None:
        self._kill(self.process)
        if self.process.stdout:
            self.process.stdout.close()

    @property
    def token_url(self) -> str:
        return f"{self.url}/identity/o/api/token"

    def revoke(self, refresh_token: str) -> int:
        """Revoke a refresh token at the provider: from now on its token endpoint answers ``invalid_grant`` for it."""
        resp = httpx.post(
            f"{self.url}/identity/o/api/revoke",
            timeout=10,
            data={
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "token": refresh_token,
                "token_type_hint": "refresh_token",
            },
        )
        return resp.status_code

    def connect(self, username: str, redirect_uri: str) -> dict:
        """The connection's first grant: an authorization-code sign-in (PKCE) as ``username``, exchanged for tokens."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid profile email",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        with IdpSession(self) as person:
            callback = person.authorize(f"{self.url}/identity/o/authorize?{query}", username)
        params = parse_qs(urlsplit(callback).query)
        if params.get("state", [""])[0] != state or "code" not in params:
            raise IdpError(f"the provider did not return a code: {callback[:200]}")
        resp = httpx.post(
            self.token_url,
            timeout=10,
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": redirect_uri,
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "code_verifier": verifier,
            },
        )
        if resp.status_code != 200:
            raise IdpError(f"code exchange failed: {resp.status_code} {resp.text[:300]}")
        return resp.json()


class IdpSession:
    """One person's browser at the provider (its own cookie jar)."""

    def __init__(self, idp: LabIdp) -> None:
        self.idp = idp
        self.http = httpx.Client(timeout=15, follow_redirects=False)

    def __enter__(self) -> IdpSession:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _inside(self, location: str) -> bool:
        return location.startswith(self.idp.url)

    def authorize(self, authorize_url: str, username: str, password: str = PASSWORD) -> str:
        """Follow the authorization request, sign in as ``username``; return the URL the provider sends back."""
        response = self.http.get(authorize_url)
        while response.is_redirect:
            location = str(response.url.join(response.headers["location"]))
            if not self._inside(location):
                return location
            response = self.http.get(location)
        match = _CSRF.search(response.text)
        if response.status_code != 200 or not match:
            raise IdpError(f"no sign-in form at the provider: {response.status_code} {response.text[:300]}")
        response = self.http.post(
            str(response.url),
            data={"csrfmiddlewaretoken": match.group(1), "login": username, "password": password},
            headers={"Referer": str(response.url)},
        )
        while response.is_redirect:
            location = str(response.url.join(response.headers["location"]))
            if not self._inside(location):
                return location
            response = self.http.get(location)
        raise IdpError(f"the provider did not redirect back: {response.status_code} {response.text[:300]}")


def expires_at(token: dict) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=int(token.get("expires_in") or 3600))
