"""Fixtures of the owner-reconnect tests.

* ``owner_case`` opens a real ``dead_grant`` case through the worker services
  (which creates the reconnect request in the same transaction).
* ``issue_link`` runs the notification service and returns the link it e-mailed.
* ``lab_idp`` starts the lab identity provider (``lab.idp.settings``:
  allauth's OIDC provider) as a real process on a free loopback port, with its
  own SQLite database, seeded by ``idp_seed``; ``lab_sign_in`` points this
  process's allauth at it.
* ``revive_server`` starts Revive itself as a real process on the test
  database (tests that use it need ``django_db(transaction=True)``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connection as db_connection

from cases import services as case_services
from cases.models import RecoveryCase, Runtime
from reauth.models import ReconnectRequest
from reauth.provider_settings import LAB_PROVIDER_ID, socialaccount_providers

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTOSO_TID = "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01"
FABRIKAM_TID = "9a0d4e7b-1c3f-4b2a-8e6d-5f7c2b1a0d02"
ADA_OID = "b1e2c3d4-5a6b-4c7d-8e9f-0a1b2c3d4e01"
MALLORY_OID = "c2f3d4e5-6b7c-4d8e-9f0a-1b2c3d4e5f02"
LAB_PASSWORD = "lab-password-1"
LAB_CLIENT_ID = "revive-lab"
LAB_CLIENT_SECRET = "lab-client-secret-for-tests"
READY_TIMEOUT = 60.0

DEAD_GRANT = {
    "status": 400,
    "body": {
        "error": "invalid_grant",
        "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
        "error_codes": [700082],
    },
}

_seq = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} did not answer {url} within {READY_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}", pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# --------------------------------------------------------------------------- cases


@dataclass
class OwnerCase:
    case: RecoveryCase
    connection_id: str
    run_id: str

    @property
    def request(self) -> ReconnectRequest:
        return ReconnectRequest.objects.filter(case=self.case).order_by("-id").first()

    def refresh(self) -> RecoveryCase:
        self.case.refresh_from_db()
        return self.case


@pytest.fixture
def owner_case(db):
    """Open an owner case on a new Entra connection whose owner is the lab's ``ada`` (Contoso)."""

    def make(
        *,
        provider: str = "entra",
        subject: str = ADA_OID,
        tenant: str = CONTOSO_TID,
        issuer: str = "",
        org: str = "",
        owner_email: str = "ada@contoso.example",
        provider_error: dict | None = None,
    ) -> OwnerCase:
        n = next(_seq)
        conn = case_services.connection_create(
            connection_id=f"conn_reauth_{n}_{os.getpid()}",
            provider=provider,
            owner_email=owner_email,
            provider_subject=subject,
            provider_tenant=tenant,
            provider_issuer=issuer,
            provider_org=org,
            display_name="Ops mailbox",
            actor="test",
        )
        run_id = f"run_reauth_{n}_{os.getpid()}"
        case_services.run_register(
            run_id=run_id,
            runtime=Runtime.LANGGRAPH,
            runtime_ref={"thread_id": run_id},
            workflow_name="Nightly executive briefing",
            actor="test",
        )
        case_services.checkpoint_record(run_id=run_id, checkpoint_id="05", label="05 / prepare brief", actor="test")
        case_services.action_begin(
            run_id=run_id,
            checkpoint_id="05",
            connection_id=conn.pk,
            action_key="send_exec_05",
            generation=1,
            actor="test",
        )
        answer = case_services.action_fail(
            run_id=run_id,
            action_key="send_exec_05",
            generation=1,
            provider_error=provider_error or DEAD_GRANT,
            actor="test",
        )
        assert answer.outcome == "parked", answer
        return OwnerCase(
            case=RecoveryCase.objects.get(reference=answer.case_reference), connection_id=conn.pk, run_id=run_id
        )

    return make


LINK_RE = re.compile(r"(https?://[^\s\"<>]+/reconnect/l/(rvr_[A-Za-z0-9_-]+))")


def link_in(message) -> tuple[str, str]:
    """(link, token) from an e-mail."""
    match = LINK_RE.search(message.body)
    assert match, message.body
    return match.group(1), match.group(2)


@pytest.fixture
def issue_link(mailoutbox):
    """Run the notification for a case's request (as the task would) and return the e-mailed link and token."""
    from reauth.notifications import reconnect_request_notify

    def issue(oc: OwnerCase) -> tuple[str, str]:
        before = len(mailoutbox)
        reconnect_request_notify(request_id=oc.request.pk)
        assert len(mailoutbox) == before + 1
        return link_in(mailoutbox[-1])

    return issue


# --------------------------------------------------------------------------- the lab identity provider


@dataclass
class LabIdp:
    url: str
    revive_port: int
    users: dict
    log: Path
    proc: subprocess.Popen = field(repr=False)
    client_id: str = LAB_CLIENT_ID
    client_secret: str = LAB_CLIENT_SECRET

    def token(self, **data) -> httpx.Response:
        return httpx.post(
            f"{self.url}/identity/o/api/token",
            data={"client_id": self.client_id, "client_secret": self.client_secret, **data},
            timeout=10,
        )

    @property
    def token_url(self) -> str:
        return f"{self.url}/identity/o/api/token"

    def revoke(self, token: str, hint: str = "refresh_token") -> httpx.Response:
        return httpx.post(
            f"{self.url}/identity/o/api/revoke",
            data={
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "token": token,
                "token_type_hint": hint,
            },
            timeout=10,
        )


# The Nango stand-in of the broker tests (tests/brokers) listens here; the provider must know its callback.
NANGO_SECRET_KEY = "nango-secret-key-for-tests"
NANGO_SIGNING_KEY = "nango-webhook-signing-key-for-tests"


SCALEKIT_CLIENT_ID = "skc_tests"
SCALEKIT_CLIENT_SECRET = "scalekit-client-secret-for-tests"


@pytest.fixture(scope="session")
def nango_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def scalekit_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def lab_idp(tmp_path_factory, nango_port, scalekit_port) -> LabIdp:
    home = tmp_path_factory.mktemp("lab_idp")
    port, revive_port = free_port(), free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "lab.idp.settings",
        "REVIVE_VAR_DIR": str(home),
        "REVIVE_IDP_DATABASE_URL": f"sqlite:///{home / 'idp.sqlite3'}",
        "REVIVE_IDP_FAST_PASSWORDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(REPO_ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    seeded = subprocess.run(
        [
            *manage,
            "idp_seed",
            "--client-id",
            LAB_CLIENT_ID,
            "--client-secret",
            LAB_CLIENT_SECRET,
            "--password",
            LAB_PASSWORD,
            "--redirect-uri",
            f"http://127.0.0.1:{revive_port}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/",
            "--redirect-uri",
            f"http://testserver/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/",
            "--redirect-uri",
            f"http://127.0.0.1:{nango_port}/oauth/callback",
            "--redirect-uri",
            f"http://127.0.0.1:{scalekit_port}/oauth/callback",
        ],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    users = json.loads(seeded.stdout)["users"]
    log = home / "idp.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    idp = LabIdp(url=f"http://127.0.0.1:{port}", revive_port=revive_port, users=users, log=log, proc=proc)
    try:
        wait_until_up(f"{idp.url}/.well-known/openid-configuration", proc, log, "the lab identity provider")
        yield idp
    finally:
        stop(proc)


@pytest.fixture
def lab_sign_in(settings, lab_idp):
    """Point this process's allauth at the lab provider (the Django test client is ``http://testserver``)."""
    settings.SOCIALACCOUNT_PROVIDERS = socialaccount_providers(
        lab_idp_url=lab_idp.url,
        lab_client_id=lab_idp.client_id,
        lab_client_secret=lab_idp.client_secret,
    )
    settings.PUBLIC_BASE_URL = "http://testserver"
    return lab_idp


@pytest.fixture
def sign_in_configured(settings):
    """A lab app that serves every Entra tenant, for tests that do not talk to a provider (its URL is never fetched)."""
    settings.SOCIALACCOUNT_PROVIDERS = socialaccount_providers(
        lab_idp_url="http://127.0.0.1:9",
        lab_client_id=LAB_CLIENT_ID,
        lab_client_secret=LAB_CLIENT_SECRET,
    )


class IdpBrowser:
    """Signs in at the lab provider over HTTP like a browser would (its own cookie jar)."""

    def __init__(self, idp: LabIdp) -> None:
        self.idp = idp
        self.http = httpx.Client(timeout=15, follow_redirects=False)

    def authorize(self, authorize_url: str, username: str) -> str:
        """Follow Revive's redirect to the provider, sign in, and return the callback URL it sends back to Revive."""
        response = self.http.get(authorize_url)
        while response.status_code in (301, 302, 303) and response.headers["location"].startswith(("/", self.idp.url)):
            response = self.http.get(httpx.URL(str(response.url)).join(response.headers["location"]))
        assert response.status_code == 200, response.text[:500]
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.text).group(1)
        response = self.http.post(
            str(response.url),
            data={"csrfmiddlewaretoken": csrf, "login": username, "password": LAB_PASSWORD},
            headers={"Referer": str(response.url)},
        )
        while response.status_code in (301, 302, 303):
            location = str(httpx.URL(str(response.url)).join(response.headers["location"]))
            if not location.startswith(self.idp.url):
                return location
            response = self.http.get(location)
        pytest.fail(f"the provider did not redirect back: {response.status_code} {response.text[:500]}")


@pytest.fixture
def idp_browser(lab_idp):
    browser = IdpBrowser(lab_idp)
    yield browser
    browser.http.close()


# --------------------------------------------------------------------------- Revive as a process


@dataclass
class ReviveServer:
    url: str
    log: Path


@pytest.fixture(scope="session")
def revive_server(
    django_db_setup, django_db_blocker, lab_idp, nango_port, scalekit_port, tmp_path_factory
) -> ReviveServer:
    home = tmp_path_factory.mktemp("revive_server")
    db = db_connection.settings_dict
    url = f"http://127.0.0.1:{lab_idp.revive_port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "revive_site.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DATABASE_CONN_MAX_AGE": "0",
        "SECRET_KEY": django_settings.SECRET_KEY,
        "REDIS_URL": "",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "REVIVE_VAR_DIR": str(home),
        "REVIVE_PUBLIC_URL": url,
        "REVIVE_LAB_IDP_URL": lab_idp.url,
        "REVIVE_LAB_IDP_CLIENT_ID": lab_idp.client_id,
        "REVIVE_LAB_IDP_CLIENT_SECRET": lab_idp.client_secret,
        "REVIVE_NANGO_URL": f"http://127.0.0.1:{nango_port}",
        "REVIVE_NANGO_CONNECT_URL": f"http://127.0.0.1:{nango_port}/connect",
        "REVIVE_NANGO_SECRET_KEY": NANGO_SECRET_KEY,
        "REVIVE_NANGO_WEBHOOK_SIGNING_KEY": NANGO_SIGNING_KEY,
        "REVIVE_SCALEKIT_ENVIRONMENT_URL": f"http://127.0.0.1:{scalekit_port}",
        "REVIVE_SCALEKIT_CLIENT_ID": SCALEKIT_CLIENT_ID,
        "REVIVE_SCALEKIT_CLIENT_SECRET": SCALEKIT_CLIENT_SECRET,
        "PYTHONUNBUFFERED": "1",
    }
    if db.get("PASSWORD"):
        env["DATABASE_URL"] = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    log = home / "revive.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO_ROOT / "manage.py"),
                "runserver",
                f"127.0.0.1:{lab_idp.revive_port}",
                "--noreload",
                "--skip-checks",
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(f"{url}/reconnect/", proc, log, "Revive")
        yield ReviveServer(url=url, log=log)
    finally:
        stop(proc)


# --------------------------------------------------------------------------- leak checks


def tables_containing(values: list[str], *, exclude: tuple[str, ...] = ("reauth_credential_custody",)) -> list[str]:
    """Every table (except ``exclude``) with a row whose text contains one of ``values``."""
    values = [v for v in values if v]
    hits = []
    with db_connection.cursor() as cursor:
        for table in db_connection.introspection.table_names(cursor):
            if table in exclude:
                continue
            quoted = db_connection.ops.quote_name(table)
            for value in values:
                cursor.execute(f"SELECT 1 FROM {quoted} t WHERE t::text LIKE %s LIMIT 1", [f"%{value}%"])
                if cursor.fetchone():
                    hits.append(f"{table}: {value[:6]}…")
    return hits
