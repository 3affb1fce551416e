"""The four scenarios of the product page, each run end to end against real services.

A ``LabWorld`` is what a scenario needs around Revive: the provider stand-in (mail
API and, for ``entra``/``auth0``, the provider's token endpoint), the lab identity
provider process, Revive's HTTP address, a worker API key, and a mailbox directory
where Revive's reconnect e-mails land (Django's file e-mail backend, so it works
whichever process sends them). ``recovery_lab`` builds one on the embedded default;
the PostgreSQL tests build one around pytest-django's live server and a real Celery
worker.

Each scenario breaks something for real (revokes the refresh token, signs in as
someone else, makes the mail service time out after accepting, kills the worker
process), lets the owner reconnect through Revive's real pages and the provider's
real redirects, waits for the resumed run to finish, and returns a summary whose
numbers are read back from the ledger, the audit log and the mail service.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
from django.db import close_old_connections, transaction

from audit.models import AuditEvent
from cases import services
from cases.models import Action, Connection, RecoveryCase, Run
from cases.runtimes import adapter_for
from reauth.custody import Grant, get_custody

from . import briefing
from .idp import IdpSession, LabIdp, expires_at
from .processes import Pidfile, spawn, stop
from .nango_standin import INTEGRATION as NANGO_INTEGRATION, NangoStandIn
from .provider_standin import ProviderStandIn
from .token_vault_standin import UPSTREAM_ACCOUNTS, TokenVaultStandIn
from .scalekit_standin import CONNECTOR as SCALEKIT_CONNECTOR, ScalekitStandIn

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "revoked": "A refresh token is revoked",
    "wrong-account": "A different account reconnects",
    "timeout": "The worker times out after a mutation",
    "worker-lost": "The original worker disappears",
}
# Scenarios beyond the product page's four, run by name only, each for the provider it belongs to.
EXTRA_SCENARIOS = {
    "cae": "A resource API revokes the session mid-run (Entra continuous access evaluation)",
}
SCENARIO_PROVIDERS = {"cae": ("entra",)}
ALL_SCENARIOS = {**SCENARIOS, **EXTRA_SCENARIOS}
PROVIDERS = ("entra", "oidc", "auth0", "auth0-token-vault", "nango", "scalekit")  # the first is the default (the product page's)
TOKEN_VAULT = "auth0-token-vault"
VAULT_CONNECTION = "google-oauth2"
VAULT_USER = "auth0|ada"
WAIT = float(os.environ.get("REVIVE_LAB_WAIT", "120"))
_LINK = re.compile(r"(https?://\S+/reconnect/l/rvr_[A-Za-z0-9_-]+)")
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_START = re.compile(r'<form[^>]*method="post"[^>]*action="([^"]*/start[^"]*)"')
_BROKER_LINK = re.compile(r'id="broker-link" href="([^"]+)"')


class ScenarioFailed(RuntimeError):
    pass


PROGRESS_EVERY = 10.0
progress: Callable[[str], None] | None = None
"""Where ``wait_for`` says that it is still waiting (set by ``lab.session.run_lab`` for its session)."""


def wait_for(check: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.05):
    started = time.monotonic()
    deadline, next_note = started + timeout, started + PROGRESS_EVERY
    while True:
        value = check()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        if progress is not None and now >= next_note:
            progress(f"  … still waiting for {what} ({now - started:.0f} s of at most {timeout:.0f} s)")
            next_note = now + PROGRESS_EVERY
        time.sleep(interval)


@dataclass
class LabWorld:
    revive_url: str
    api_key: str = field(repr=False)
    idp: LabIdp
    standin: ProviderStandIn
    mailbox: Path
    var_dir: Path
    worker_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Environment of lab worker processes (scenario ``worker-lost``)."""
    vault: TokenVaultStandIn | None = None
    """Auth0 Token Vault and My Account API stand-in (provider ``auth0-token-vault``)."""
    children: Pidfile | None = field(default=None, repr=False)
    """Where the session records the processes it starts (``lab.session.reap_leftovers``)."""
    runtime_server: object | None = None
    """The runtime's server the lab started (``lab.runtimes``), for runtimes other than LangGraph."""
    nango: NangoStandIn | None = None
    """The Nango stand-in, for ``--provider nango`` (the broker holds the grant)."""
    scalekit: ScalekitStandIn | None = None
    """The Scalekit stand-in, for ``--provider scalekit``."""
    on_run: Callable[[str], None] | None = field(default=None, repr=False)
    """Told each scenario's run id as the scenario starts (the ``/lab/`` page finds its case by it)."""

    def broker_env(self) -> dict[str, str]:
        env = {"REVIVE_LAB_NANGO_SECRET_KEY": self.nango.secret_key} if self.nango else {}
        if self.scalekit:
            env.update(REVIVE_LAB_SCALEKIT_CLIENT_ID=self.scalekit.client_id,
                       REVIVE_LAB_SCALEKIT_CLIENT_SECRET=self.scalekit.client_secret)
        return env

    @property
    def callback_url(self) -> str:
        from reauth.provider_settings import LAB_PROVIDER_ID

        return f"{self.revive_url}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/"

    def export_env(self) -> None:
        """What the briefing's worker code reads: Revive's address and key, the token client's credentials."""
        os.environ.update(REVIVE_LAB_URL=self.revive_url, REVIVE_LAB_API_KEY=self.api_key,
                          REVIVE_LAB_IDP_CLIENT_ID=self.idp.client_id, REVIVE_LAB_IDP_CLIENT_SECRET=self.idp.client_secret,
                          **self._vault_env(), **self.broker_env())

    def _vault_env(self) -> dict[str, str]:
        if self.vault is None:
            return {}
        return {"REVIVE_LAB_VAULT_CLIENT_ID": self.vault.client_id, "REVIVE_LAB_VAULT_CLIENT_SECRET": self.vault.client_secret}

    def worker_environment(self) -> dict[str, str]:
        return {**os.environ, **self.worker_env, "REVIVE_LAB_URL": self.revive_url, "REVIVE_LAB_API_KEY": self.api_key,
                "REVIVE_LAB_IDP_CLIENT_ID": self.idp.client_id, "REVIVE_LAB_IDP_CLIENT_SECRET": self.idp.client_secret,
                "PYTHONUNBUFFERED": "1", **self._vault_env(), **self.broker_env()}


def token_vault_settings(vault: TokenVaultStandIn) -> dict:
    """``REVIVE_AUTH0_TOKEN_VAULT`` pointing at the stand-in, its upstream ("Google") behind the connection."""
    return {"domain": vault.url, "client_id": vault.client_id, "client_secret": vault.client_secret,
            "connections": {VAULT_CONNECTION: {"userinfo_url": f"{vault.url}/upstream/userinfo",
                                               "issuer": vault.upstream_issuer, "scopes": ["openid", "email"]}}}


def socialaccount_providers_for(idp: LabIdp) -> dict:
    """Revive's sign-in apps for the lab: the lab provider plays Entra (any tenant), an OIDC issuer and Auth0."""
    from reauth.provider_settings import socialaccount_providers

    providers = socialaccount_providers(lab_idp_url=idp.url, lab_client_id=idp.client_id, lab_client_secret=idp.client_secret)
    for app in providers["openid_connect"]["APPS"]:
        serves = app["settings"]["revive"]["serves"]
        serves.append({"provider": "auth0", "issuer": idp.issuer})
        if idp.issuer.rstrip("/") != idp.url.rstrip("/"):
            serves.append({"provider": "oidc", "issuer": idp.issuer})
    return providers


# --------------------------------------------------------------------------- the owner


class Owner:
    """The account owner's browser on Revive's reconnect pages (the provider's pages through ``IdpSession``)."""

    def __init__(self, world: LabWorld) -> None:
        self.world = world
        self.http = httpx.Client(timeout=WAIT, follow_redirects=False)
        self.landing = ""
        self.authorize_urls: list[str] = []

    def close(self) -> None:
        self.http.close()

    def open_link(self, link: str) -> None:
        response = self.http.get(link)
        if response.status_code != 302:
            raise ScenarioFailed(f"the reconnect link answered {response.status_code}")
        self.landing = str(response.url.join(response.headers["location"]))

    def _upstream_consent(self, connect_url: str, username: str) -> str:
        """The upstream provider's page behind a Connected Accounts ``connect_uri``: choose the account."""
        with httpx.Client(timeout=WAIT, follow_redirects=False) as upstream:
            page = upstream.get(connect_url)
            ticket = parse_qs(urlsplit(connect_url).query).get("ticket", [""])[0]
            if page.status_code != 200:
                raise ScenarioFailed(f"the upstream consent page answered {page.status_code}")
            back = upstream.post(str(page.url.join("/upstream/authorize")), data={"ticket": ticket, "account": username})
        if back.status_code != 302:
            raise ScenarioFailed(f"the upstream consent answered {back.status_code}")
        return back.headers["location"]

    def sign_in(self, username: str) -> dict:
        """Press the button on the landing page, sign in at the provider as ``username``, come back to Revive."""
        page = self.http.get(self.landing)
        csrf, start = _CSRF.search(page.text), _START.search(page.text)
        if page.status_code != 200 or not csrf or not start:
            raise ScenarioFailed(f"no reconnect button on {self.landing}: {page.status_code}")
        response = self.http.post(str(page.url.join(start.group(1))), data={"csrfmiddlewaretoken": csrf.group(1)},
                                  headers={"Referer": self.landing})
        if response.status_code != 302:
            raise ScenarioFailed(f"starting the sign-in answered {response.status_code}")
        self.authorize_urls.append(response.headers["location"])
        if "/broker" in response.headers["location"]:
            return self._through_broker(str(response.url.join(response.headers["location"])), username)
        if self.world.vault is not None and response.headers["location"].startswith(self.world.vault.url):
            callback = self._upstream_consent(response.headers["location"], username)
        else:
            with IdpSession(self.world.idp) as person:
                callback = person.authorize(response.headers["location"], username)
        response = self.http.get(callback)  # Revive verifies the identity here (and, when it matches, resumes)
        outcome = response.headers.get("location", "")
        page = self.http.get(str(response.url.join(outcome))) if response.is_redirect else response
        return {"status": response.status_code, "location": outcome, "page_status": page.status_code,
                "code": page.headers.get("x-revive-code", ""),
                "consumed": outcome.endswith("/done"), "refused": outcome.endswith("/refused"),
                "claims": parse_qs(urlsplit(self.authorize_urls[-1]).query).get("claims", [""])[0]}


    def _through_broker(self, waiting: str, username: str) -> dict:
        """Revive's waiting page links to the broker's Connect UI; sign in there, then follow the waiting page."""
        page = self.http.get(waiting)
        link = _BROKER_LINK.search(page.text)
        if page.status_code != 200 or not link:
            raise ScenarioFailed(f"no broker link on {waiting}: {page.status_code}")
        import html

        with IdpSession(self.world.idp) as person:
            callback = person.authorize(html.unescape(link.group(1)), username)
            done = person.http.get(callback)  # the broker stores the grant and tells Revive (signed webhook)
        if done.status_code != 200:
            raise ScenarioFailed(f"the broker's callback answered {done.status_code}")

        def outcome():
            response = self.http.get(waiting)
            location = response.headers.get("location", "") if response.is_redirect else ""
            return location if location.endswith(("/done", "/refused")) else None

        location = wait_for(outcome, "Revive to prove the identity behind the broker's reconnect")
        page = self.http.get(str(httpx.URL(waiting).join(location)))
        return {"status": 302, "location": location, "page_status": page.status_code,
                "code": page.headers.get("x-revive-code", ""),
                "consumed": location.endswith("/done"), "refused": location.endswith("/refused")}


def reconnect_link(world: LabWorld, case_reference: str, *, timeout: float = WAIT) -> str:
    """The link Revive e-mailed the owner for this case (the newest, if it was resent)."""

    def find():
        found = []
        for path in sorted(world.mailbox.glob("*.log"), key=lambda p: p.stat().st_mtime):
            for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
                msg = message_from_bytes(chunk.strip())
                if msg.get("X-Revive-Case") == case_reference:
                    match = _LINK.search(chunk.decode(errors="replace"))
                    if match:
                        found.append(match.group(1))
        return found[-1] if found else None

    return wait_for(find, f"the reconnect e-mail of {case_reference}", timeout=timeout)


# --------------------------------------------------------------------------- one scenario


@dataclass
class Scenario:
    name: str
    world: LabWorld
    provider: str = "oidc"
    interactive: bool = False
    say: Callable[[str], None] = lambda line: None
    run_id: str = ""
    connection_id: str = ""
    thread_id: str = ""
    case_reference: str = ""
    notes: dict = field(default_factory=dict)
    sdk = "python"
    runtime = "langgraph"

    def __post_init__(self) -> None:
        suffix = secrets.token_hex(3)
        self.run_id = f"run_7f2_{suffix}"
        self.thread_id = f"thread_7f2_{suffix}"
        self.connection_id = f"conn_microsoft_ops_{suffix}"
        self.owner_user = self.world.idp.users["right"]
        self.first_event = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        if self.world.on_run is not None:
            self.world.on_run(self.run_id)

    # -- set-up ---------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.world.idp.token_url if self.provider in ("oidc", "nango", "scalekit") else f"{self.world.standin.url}/oauth2/v2.0/token"

    @property
    def nango_connection(self) -> str:
        return f"nango-{self.connection_id}"

    def connect(self) -> None:
        """Register the connection with the owner's identity and put its first grant in custody (generation 1)."""
        if self.provider == TOKEN_VAULT:
            return self._connect_token_vault()
        user, idp = self.owner_user, self.world.idp
        if self.provider == "nango":  # the broker holds the grant; Revive records the references and the identity
            services.connection_create(connection_id=self.connection_id, owner_email=user["email"], provider="nango",
                                       upstream_provider="oidc", provider_subject=user["sub"], provider_issuer=idp.issuer,
                                       broker_integration=NANGO_INTEGRATION, broker_connection=self.nango_connection,
                                       display_name="Microsoft ops mailbox (Nango)", actor="lab")
            self.world.nango.connect(self.nango_connection, user["username"])
            self.standin_from = len(self.world.standin.messages)
            return
        if self.provider == "scalekit":  # the account exists at Scalekit before Revive is told about it
            self.world.scalekit.connect(self.nango_connection, user["username"])
            services.connection_create(connection_id=self.connection_id, owner_email=user["email"], provider="scalekit",
                                       upstream_provider="oidc", provider_subject=user["sub"], provider_issuer=idp.issuer,
                                       broker_integration=SCALEKIT_CONNECTOR, broker_connection=self.nango_connection,
                                       display_name="Microsoft ops mailbox (Scalekit)", actor="lab")
            self.standin_from = len(self.world.standin.messages)
            return
        identity = {
            "entra": dict(provider="entra", provider_subject=user["oid"], provider_tenant=user["tid"]),
            "auth0": dict(provider="auth0", provider_subject=user["sub"], provider_issuer=idp.issuer),
            "oidc": dict(provider="oidc", provider_subject=user["sub"], provider_issuer=idp.issuer),
        }[self.provider]
        services.connection_create(connection_id=self.connection_id, owner_email=user["email"],
                                   display_name="Microsoft ops mailbox", actor="lab", **identity)
        token = idp.connect(user["username"], self.world.callback_url)
        get_custody().store(connection_id=self.connection_id, generation=1, grant=Grant(
            access_token=token["access_token"], refresh_token=token["refresh_token"], id_token=token.get("id_token", ""),
            expires_at=expires_at(token)))
        self.standin_from = len(self.world.standin.messages)

    def _connect_token_vault(self) -> None:
        """A Token Vault connection: the owner's upstream ("Google") account is connected in Auth0; custody keeps
        only the owner's Auth0 session grant (the exchange's subject token), never an upstream token."""
        vault, user = self.world.vault, self.owner_user
        services.connection_create(connection_id=self.connection_id, owner_email=user["email"], provider="auth0_token_vault",
                                   provider_subject=UPSTREAM_ACCOUNTS[user["username"]]["sub"],
                                   provider_tenant=VAULT_CONNECTION, provider_issuer=vault.upstream_issuer,
                                   display_name="Ops mailbox (Google, via Auth0 Token Vault)", actor="lab")
        session = vault.sign_in(VAULT_USER, connection=VAULT_CONNECTION, upstream=user["username"])
        get_custody().store(connection_id=self.connection_id, generation=1, grant=Grant(access_token="", refresh_token=session))
        self.standin_from = len(self.world.standin.messages)

    def revoke_refresh_token(self) -> None:
        """The fault: the refresh token in custody stops working at its provider."""
        if self.provider == TOKEN_VAULT:  # the upstream grant behind the connected account disappears
            self.world.vault.revoke_upstream(VAULT_USER, VAULT_CONNECTION)
        if self.provider == "nango":
            status = self.world.idp.revoke(self.world.nango.refresh_token(self.nango_connection))
            if status != 200:
                raise ScenarioFailed(f"the identity provider refused the revocation ({status})")
            return
        if self.provider == "scalekit":
            status = self.world.idp.revoke(self.world.scalekit.refresh_token(self.nango_connection))
            if status != 200:
                raise ScenarioFailed(f"the identity provider refused the revocation ({status})")
            # Scalekit's next refresh of the account (when the worker asks for its token at 05) fails: the account
            # turns EXPIRED, which Revive's poll sees as well as the worker.
            return
        grant = get_custody().load(connection_id=self.connection_id)
        if self.provider == "oidc":
            status = self.world.idp.revoke(grant.refresh_token)
            if status != 200:
                raise ScenarioFailed(f"the identity provider refused the revocation ({status})")
        else:
            self.world.standin.provider = self.provider
            self.world.standin.revoke(grant.refresh_token)

    def state(self) -> dict:
        state = {"run_id": self.run_id, "connection_id": self.connection_id, "token_url": self.token_url,
                 "mail_url": self.world.standin.url, "recipient": "exec-team@contoso.example"}
        if self.provider == TOKEN_VAULT:
            state["vault"] = {"url": self.world.vault.url, "connection": VAULT_CONNECTION}
        if self.provider == "nango":
            state.update(nango_url=self.world.nango.url, nango_integration=NANGO_INTEGRATION,
                         nango_connection=self.nango_connection)
        if self.provider == "scalekit":
            state.update(scalekit_url=self.world.scalekit.url, scalekit_connector=SCALEKIT_CONNECTOR,
                         scalekit_identifier=self.nango_connection)
        return state

    # -- running the graph ----------------------------------------------------------------

    def graph(self):
        return adapter_for("langgraph").graph(briefing.GRAPH_NAME)

    def invoke(self, payload) -> dict:
        """Run the briefing in this process (the worker), on its thread, with Revive's checkpointer."""
        return self.graph().invoke(payload, {"configurable": {"thread_id": self.thread_id}})

    def start_worker_process(self, api_key: str | None = None) -> subprocess.Popen:
        args = [sys.executable, "-m", "lab.worker", "--run-id", self.run_id, "--thread-id", self.thread_id,
                "--input", json.dumps(self.state())]
        log = open(self.world.var_dir / f"worker-{self.run_id}.log", "ab")
        env = self.world.worker_environment()
        if api_key:
            env["REVIVE_LAB_API_KEY"] = api_key
        process = spawn(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log)
        log.close()
        if self.world.children is not None:
            self.world.children.add(process, f"lab worker {self.run_id}")
        return process

    def parked_case(self) -> str:
        case = wait_for(lambda: RecoveryCase.objects.filter(case_runs__run_id=self.run_id).order_by("-pk").first(),
                        f"a recovery case for {self.run_id}")
        self.case_reference = case.reference
        return case.reference

    # -- the owner --------------------------------------------------------------------------

    def owner_reconnects(self, *usernames: str) -> list[dict]:
        link = reconnect_link(self.world, self.case_reference)
        if self.interactive:
            self.say(f"  Open the owner's link and sign in as '{self.owner_user['username']}' (password lab-password-1):")
            self.say(f"    {link}")
            wait_for(lambda: Connection.objects.get(pk=self.connection_id).current_generation > 1,
                     "the owner to reconnect", timeout=float(os.environ.get("REVIVE_LAB_INTERACTIVE_WAIT", "900")))
            return [{"consumed": True, "interactive": True}]
        owner = Owner(self.world)
        try:
            owner.open_link(link)
            results = []
            for username in usernames:
                self.say(f"  · owner signs in at the identity provider as '{username}'")
                results.append(owner.sign_in(username))
            return results
        finally:
            owner.close()

    def wait_finished(self) -> None:
        def done():
            case = RecoveryCase.objects.get(reference=self.case_reference)
            return case.state == "resumed" and adapter_for(self.runtime).status(Run.objects.get(pk=self.run_id)).state == "completed"
        wait_for(done, f"{self.run_id} to resume and finish")

    # -- the scenarios ----------------------------------------------------------------------

    def run(self) -> dict:
        started = time.monotonic()
        self.connect()
        generation_before = Connection.objects.get(pk=self.connection_id).current_generation
        self.register()
        getattr(self, f"_{self.name.replace('-', '_')}")()
        self.wait_finished()
        return self.summary(generation_before, time.monotonic() - started)

    def register(self) -> None:
        briefing.register(self.run_id, thread_id=self.thread_id)

    def checkpoints_completed(self) -> list[str]:
        snapshot = self.graph().get_state({"configurable": {"thread_id": self.thread_id}})
        return [step["checkpoint"] for step in snapshot.values.get("log", [])]

    def _park_on_revoked_grant(self, *, resume_thread: bool = False) -> None:
        self.say("  ⚡ injected fault: the refresh token is revoked at the provider")
        self.revoke_refresh_token()
        result = self.invoke(None if resume_thread else self.state())
        if not result.get("__interrupt__"):
            raise ScenarioFailed("the run was not parked although its refresh token was revoked")
        self.parked_case()

    def _revoked(self) -> None:
        self._park_on_revoked_grant()
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def _wrong_account(self) -> None:
        self._park_on_revoked_grant()
        wrong = self.world.idp.users["wrong"]["username"]
        self.notes["sign_in"] = self.owner_reconnects(wrong, self.owner_user["username"])
        if self.interactive:
            return
        refused = AuditEvent.objects.filter(action="reconnect.identity_mismatch", case_reference=self.case_reference).first()
        if refused is not None:
            self.notes["refused"] = {"expected": refused.arguments.get("expected"), "presented": refused.arguments.get("presented"),
                                     "mismatched": refused.arguments.get("mismatched")}

    def _timeout(self) -> None:
        self.say("  ⚡ injected fault: the mail service accepts the brief, then does not answer in time")
        self.world.standin.time_out_next(briefing.MAIL_TIMEOUT + 0.5)
        try:
            self.invoke(self.state())
            raise ScenarioFailed("the send did not time out")
        except httpx.TimeoutException:
            pass
        action = Action.objects.get(run_id=self.run_id, action_key=briefing.SEND_ACTION)
        self.notes["after_timeout"] = action.state
        self.say(f"  · worker: the send timed out; the ledger holds {briefing.SEND_ACTION} as '{action.state}'")
        # Before the worker retries the step, the grant dies too: looking the message up needs the owner.
        self._park_on_revoked_grant(resume_thread=True)
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def _cae(self) -> None:
        """Microsoft Graph revokes the session mid-run (CAE): the brief's send gets a claims challenge."""
        self.say("  ⚡ injected fault: the mail API revokes the session mid-run: 401 insufficient_claims (continuous access evaluation)")
        grant = get_custody().load(connection_id=self.connection_id)
        self.notes["challenge_claims"] = self.world.standin.cae_revoke(grant.refresh_token)
        result = self.invoke(self.state())
        if not result.get("__interrupt__"):
            raise ScenarioFailed("the run was not parked although the resource API sent a claims challenge")
        self.parked_case()
        case = RecoveryCase.objects.get(reference=self.case_reference)
        self.notes["case_claims"] = case.provider_error.get("claims", "")
        self.notes["case_reason"] = case.provider_error.get("reason", "")
        self.say(f"  · Revive: {case.failure_class} ({case.provider_error.get('reason')}), claims kept on {case.reference}")
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])
        received = httpx.get(f"{self.world.idp.url}/lab/claims-requests", timeout=10).json()["requests"]
        self.notes["idp_claims"] = received[-1]["claims"] if received else None

    def _worker_lost(self) -> None:
        self.say("  ⚡ injected fault: the refresh token is revoked at the provider")
        self.revoke_refresh_token()
        # The worker process has a key of its own, so that the audit log tells it from Revive's worker.
        key, raw = services.api_key_create(name=f"lab-A-{self.run_id[-6:]}", actor="lab")
        self.say(f"  · worker:lab-A starts the run (a process of its own, worker:{key.name} in the audit log)")
        process = self.start_worker_process(api_key=raw)
        try:
            line = wait_for(lambda: process.stdout.readline() or (process.poll() is not None and b"{}"), "the worker to park")
            report = json.loads(line or b"{}")
            if not report.get("interrupts"):
                raise ScenarioFailed(f"the worker process did not park the run (exit {process.poll()})")
            self.parked_case()
            self.notes["killed_pid"] = process.pid
            self.say(f"  ⚡ injected fault: worker:lab-A (pid {process.pid}) is killed (SIGKILL) while the run is parked; "
                     "Revive's worker (this process) resumes the run after the owner reconnects")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        finally:
            stop(process, sig=signal.SIGKILL)
            if self.world.children is not None:
                self.world.children.discard(process)
            process.stdout.close()
            with transaction.atomic():
                services.api_key_revoke(key_id=key.pk, actor="lab")
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    # -- the record ---------------------------------------------------------------------------

    def events(self) -> list[AuditEvent]:
        from django.db.models import Q

        return list(AuditEvent.objects.filter(id__gt=self.first_event)
                    .filter(Q(run_id=self.run_id) | Q(case_reference=self.case_reference) | Q(connection_id=self.connection_id))
                    .order_by("id"))

    def summary(self, generation_before: int, seconds: float) -> dict:
        from .timeline import describe

        case = RecoveryCase.objects.select_related("checkpoint", "action").get(reference=self.case_reference)
        send = Action.objects.get(run_id=self.run_id, action_key=briefing.SEND_ACTION)
        messages = self.world.standin.messages_for(self.run_id)
        keys = [m["idempotency_key"] for m in messages]
        events = [describe(e) for e in self.events()]
        live = [e["live_transition"] for e in events if e["live_transition"]]
        result = {
            "scenario": self.name,
            "title": ALL_SCENARIOS[self.name],
            "provider": self.provider,
            "runtime": self.runtime,
            "sdk": self.sdk,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "case_id": case.reference,
            "case_pk": case.pk,
            "case_state": case.state,
            "run_state": Run.objects.get(pk=self.run_id).state,
            "checkpoint": case.checkpoint.label if case.checkpoint_id else "",
            "action_key": case.action.action_key if case.action_id else "",
            "failure_class": case.failure_class,
            "provider_code": case.provider_code,
            "generation_before": generation_before,
            "generation_after": Connection.objects.get(pk=self.connection_id).current_generation,
            "messages_accepted": len(messages),
            "duplicate_effects_observed": len(keys) - len(set(keys)),
            "send_state": send.state,
            "send_attempts": send.attempts,
            "brief_sent_by_pid": messages[-1].get("pid") if messages else None,
            "checkpoints_completed": self.checkpoints_completed(),
            "live_transitions": live,
            "transitions": events,
            "notes": self.notes,
            "seconds": round(seconds, 2),
        }
        result["problems"] = self.problems(result)
        result["ok"] = not result["problems"]
        return result

    def _cae_problems(self, notes: dict) -> list[str]:
        problems = []
        challenge = json.loads(notes.get("challenge_claims") or "{}")
        if not challenge or json.loads(notes.get("case_claims") or "{}") != challenge:
            problems.append("the case did not keep the claims the resource API asked for")
        if notes.get("case_reason") != "claims_challenge":
            problems.append(f"the case's reason was {notes.get('case_reason')!r}, not claims_challenge")
        if self.interactive:
            return problems
        sent = json.loads((notes.get("sign_in") or [{}])[-1].get("claims") or "{}")
        received = notes.get("idp_claims") or {}
        for name, where in (("the owner's sign-in", sent), ("the identity provider", received)):
            wanted = challenge.get("access_token", {})
            if any((where.get("access_token") or {}).get(k) != v for k, v in wanted.items()):
                problems.append(f"{name} did not carry the claims challenge")
        return problems

    def problems(self, r: dict) -> list[str]:
        problems = []
        if r["messages_accepted"] != 1 or r["duplicate_effects_observed"]:
            problems.append(f"the mail service accepted {r['messages_accepted']} message(s) for the run, not exactly one")
        if r["case_state"] != "resumed":
            problems.append(f"the case ended {r['case_state']}, not resumed")
        if r["generation_after"] != r["generation_before"] + 1:
            problems.append(f"the generation went {r['generation_before']} → {r['generation_after']}, not up by one")
        if r["live_transitions"] != [1, 2, 3, 4]:
            problems.append(f"the live transitions were {r['live_transitions']}, not 1, 2, 3, 4 in order")
        if not r["checkpoint"].startswith("05") or r["action_key"] != briefing.SEND_ACTION:
            problems.append(f"the case points at {r['checkpoint']!r}/{r['action_key']!r}, not 05 / {briefing.SEND_ACTION}")
        if r["checkpoints_completed"] != ["01", "02", "03", "04", "05"]:
            problems.append(f"the run completed checkpoints {r['checkpoints_completed']}")
        expected_class = ("interaction_required" if self.name == "cae" else
                          "relink_required" if self.provider == TOKEN_VAULT else "dead_grant")
        if r["failure_class"] != expected_class:
            problems.append(f"the failure was classified {r['failure_class']}, not {expected_class}")
        if self.name == "cae":
            problems.extend(self._cae_problems(r["notes"]))
        sign_ins = r["notes"].get("sign_in") or []
        if not sign_ins or not sign_ins[-1].get("consumed"):
            problems.append("the owner's sign-in did not reconnect")
        if self.name == "wrong-account" and not self.interactive:
            if not (sign_ins and sign_ins[0].get("refused") and r["notes"].get("refused")):
                problems.append("the wrong account was not refused with both identities recorded")
        if self.name == "timeout":
            if r["notes"].get("after_timeout") != "ambiguous":
                problems.append(f"after the timeout the send was {r['notes'].get('after_timeout')}, not ambiguous")
            if r["send_state"] != "reconciled_committed":
                problems.append(f"the send ended {r['send_state']}, not reconciled_committed")
        if self.name == "worker-lost":
            killed = r["notes"].get("killed_pid")
            if not killed or r["brief_sent_by_pid"] in (None, killed):
                problems.append("the brief was not sent by a process other than the killed worker")
        return problems


def run_scenario(name: str, world: LabWorld, *, provider: str = "oidc", interactive: bool = False,
                 say: Callable[[str], None] = lambda line: None, sdk: str = "python", runtime: str = "langgraph") -> dict:
    close_old_connections()
    kind = Scenario
    if sdk == "typescript":
        from .typescript import TypeScriptScenario as kind
    elif runtime == "temporal":
        from .runtimes import TemporalScenario as kind
    elif runtime == "restate":
        from .runtimes import RestateScenario as kind
    scenario = kind(name=name, world=world, provider=provider, interactive=interactive, say=say)
    try:
        return scenario.run()
    except Exception as exc:  # a misbehaving scenario is a result, with what is known so far
        return {"scenario": name, "title": ALL_SCENARIOS[name], "provider": provider, "runtime": runtime,
                "run_id": scenario.run_id, "case_id": scenario.case_reference or None, "ok": False,
                "problems": [f"{type(exc).__name__}: {exc}"], "notes": scenario.notes}
