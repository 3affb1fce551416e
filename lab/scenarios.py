"""The four scenarios of the product page, each run end to end against real services.

A scenario runs in a ``lab.world.LabWorld`` (the stand-ins, the lab identity provider, Revive's address and key,
the owner's mailbox); the owner acts through ``lab.owner``; the summary and its problems are ``lab.summary``'s.

Each scenario breaks something for real (revokes the refresh token, signs in as
someone else, makes the mail service time out after accepting, kills the worker
process), lets the owner reconnect through Revive's real pages and the provider's
real redirects, waits for the resumed run to finish, and returns a summary whose
numbers are read back from the ledger, the audit log and the mail service.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from django.db import close_old_connections, transaction

from audit.models import AuditEvent
from cases import services
from cases.models import Action, Connection, RecoveryCase, Run
from cases.runtimes import adapter_for
from reauth.custody import Grant, get_custody

from . import briefing
from .idp.driver import expires_at
from .nango_standin import INTEGRATION as NANGO_INTEGRATION
from .owner import Owner, reconnect_link
from .processes import spawn, stop
from .scalekit_standin import CONNECTOR as SCALEKIT_CONNECTOR
from .summary import ScenarioSummary
from .token_vault_standin import UPSTREAM_ACCOUNTS
from .waiting import ScenarioFailed, wait_for
from .world import ALL_SCENARIOS, ROOT, TOKEN_VAULT, VAULT_CONNECTION, VAULT_USER, LabWorld

# --------------------------------------------------------------------------- one scenario


@dataclass
class Scenario(ScenarioSummary):
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
        return (
            self.world.idp.token_url
            if self.provider in ("oidc", "nango", "scalekit")
            else f"{self.world.standin.url}/oauth2/v2.0/token"
        )

    @property
    def nango_connection(self) -> str:
        return f"nango-{self.connection_id}"

    def connect(self) -> None:
        """Register the connection with the owner's identity and put its first grant in custody (generation 1)."""
        if self.provider == TOKEN_VAULT:
            return self._connect_token_vault()
        user, idp = self.owner_user, self.world.idp
        if self.provider == "nango":  # the broker holds the grant; Revive records the references and the identity
            services.connection_create(
                connection_id=self.connection_id,
                owner_email=user["email"],
                provider="nango",
                upstream_provider="oidc",
                provider_subject=user["sub"],
                provider_issuer=idp.issuer,
                broker_integration=NANGO_INTEGRATION,
                broker_connection=self.nango_connection,
                display_name="Microsoft ops mailbox (Nango)",
                actor="lab",
            )
            self.world.nango.connect(self.nango_connection, user["username"])
            self.standin_from = len(self.world.standin.messages)
            return
        if self.provider == "scalekit":  # the account exists at Scalekit before Revive is told about it
            self.world.scalekit.connect(self.nango_connection, user["username"])
            services.connection_create(
                connection_id=self.connection_id,
                owner_email=user["email"],
                provider="scalekit",
                upstream_provider="oidc",
                provider_subject=user["sub"],
                provider_issuer=idp.issuer,
                broker_integration=SCALEKIT_CONNECTOR,
                broker_connection=self.nango_connection,
                display_name="Microsoft ops mailbox (Scalekit)",
                actor="lab",
            )
            self.standin_from = len(self.world.standin.messages)
            return
        identity = {
            "entra": dict(provider="entra", provider_subject=user["oid"], provider_tenant=user["tid"]),
            "auth0": dict(provider="auth0", provider_subject=user["sub"], provider_issuer=idp.issuer),
            "oidc": dict(provider="oidc", provider_subject=user["sub"], provider_issuer=idp.issuer),
        }[self.provider]
        services.connection_create(
            connection_id=self.connection_id,
            owner_email=user["email"],
            display_name="Microsoft ops mailbox",
            actor="lab",
            **identity,
        )
        token = idp.connect(user["username"], self.world.callback_url)
        get_custody().store(
            connection_id=self.connection_id,
            generation=1,
            grant=Grant(
                access_token=token["access_token"],
                refresh_token=token["refresh_token"],
                id_token=token.get("id_token", ""),
                expires_at=expires_at(token),
            ),
        )
        self.standin_from = len(self.world.standin.messages)

    def _connect_token_vault(self) -> None:
        """A Token Vault connection: the owner's upstream ("Google") account is connected in Auth0; custody keeps
        only the owner's Auth0 session grant (the exchange's subject token), never an upstream token."""
        vault, user = self.world.vault, self.owner_user
        services.connection_create(
            connection_id=self.connection_id,
            owner_email=user["email"],
            provider="auth0_token_vault",
            provider_subject=UPSTREAM_ACCOUNTS[user["username"]]["sub"],
            provider_tenant=VAULT_CONNECTION,
            provider_issuer=vault.upstream_issuer,
            display_name="Ops mailbox (Google, via Auth0 Token Vault)",
            actor="lab",
        )
        session = vault.sign_in(VAULT_USER, connection=VAULT_CONNECTION, upstream=user["username"])
        get_custody().store(
            connection_id=self.connection_id, generation=1, grant=Grant(access_token="", refresh_token=session)
        )
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
        state = {
            "run_id": self.run_id,
            "connection_id": self.connection_id,
            "token_url": self.token_url,
            "mail_url": self.world.standin.url,
            "recipient": "exec-team@contoso.example",
        }
        if self.provider == TOKEN_VAULT:
            state["vault"] = {"url": self.world.vault.url, "connection": VAULT_CONNECTION}
        if self.provider == "nango":
            state.update(
                nango_url=self.world.nango.url,
                nango_integration=NANGO_INTEGRATION,
                nango_connection=self.nango_connection,
            )
        if self.provider == "scalekit":
            state.update(
                scalekit_url=self.world.scalekit.url,
                scalekit_connector=SCALEKIT_CONNECTOR,
                scalekit_identifier=self.nango_connection,
            )
        return state

    # -- running the graph ----------------------------------------------------------------

    def graph(self):
        return adapter_for("langgraph").graph(briefing.GRAPH_NAME)

    def invoke(self, payload) -> dict:
        """Run the briefing in this process (the worker), on its thread, with Revive's checkpointer."""
        return self.graph().invoke(payload, {"configurable": {"thread_id": self.thread_id}})

    def start_worker_process(self, api_key: str | None = None) -> subprocess.Popen:
        args = [
            sys.executable,
            "-m",
            "lab.worker",
            "--run-id",
            self.run_id,
            "--thread-id",
            self.thread_id,
            "--input",
            json.dumps(self.state()),
        ]
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
        case = wait_for(
            lambda: RecoveryCase.objects.filter(case_runs__run_id=self.run_id).order_by("-pk").first(),
            f"a recovery case for {self.run_id}",
        )
        self.case_reference = case.reference
        return case.reference

    # -- the owner --------------------------------------------------------------------------

    def owner_reconnects(self, *usernames: str) -> list[dict]:
        link = reconnect_link(self.world, self.case_reference)
        if self.interactive:
            self.say(
                f"  Open the owner's link and sign in as '{self.owner_user['username']}' (password lab-password-1):"
            )
            self.say(f"    {link}")
            wait_for(
                lambda: Connection.objects.get(pk=self.connection_id).current_generation > 1,
                "the owner to reconnect",
                timeout=float(os.environ.get("REVIVE_LAB_INTERACTIVE_WAIT", "900")),
            )
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
            return (
                case.state == "resumed"
                and adapter_for(self.runtime).status(Run.objects.get(pk=self.run_id)).state == "completed"
            )

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
        refused = AuditEvent.objects.filter(
            action="reconnect.identity_mismatch", case_reference=self.case_reference
        ).first()
        if refused is not None:
            self.notes["refused"] = {
                "expected": refused.arguments.get("expected"),
                "presented": refused.arguments.get("presented"),
                "mismatched": refused.arguments.get("mismatched"),
            }

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
        self.say(
            "  ⚡ injected fault: the mail API revokes the session mid-run: 401 insufficient_claims (continuous access evaluation)"
        )
        grant = get_custody().load(connection_id=self.connection_id)
        self.notes["challenge_claims"] = self.world.standin.cae_revoke(grant.refresh_token)
        result = self.invoke(self.state())
        if not result.get("__interrupt__"):
            raise ScenarioFailed("the run was not parked although the resource API sent a claims challenge")
        self.parked_case()
        case = RecoveryCase.objects.get(reference=self.case_reference)
        self.notes["case_claims"] = case.provider_error.get("claims", "")
        self.notes["case_reason"] = case.provider_error.get("reason", "")
        self.say(
            f"  · Revive: {case.failure_class} ({case.provider_error.get('reason')}), claims kept on {case.reference}"
        )
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
            line = wait_for(
                lambda: process.stdout.readline() or (process.poll() is not None and b"{}"), "the worker to park"
            )
            report = json.loads(line or b"{}")
            if not report.get("interrupts"):
                raise ScenarioFailed(f"the worker process did not park the run (exit {process.poll()})")
            self.parked_case()
            self.notes["killed_pid"] = process.pid
            self.say(
                f"  ⚡ injected fault: worker:lab-A (pid {process.pid}) is killed (SIGKILL) while the run is parked; "
                "Revive's worker (this process) resumes the run after the owner reconnects"
            )
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


def run_scenario(
    name: str,
    world: LabWorld,
    *,
    provider: str = "oidc",
    interactive: bool = False,
    say: Callable[[str], None] = lambda line: None,
    sdk: str = "python",
    runtime: str = "langgraph",
) -> dict:
    close_old_connections()
    kind = Scenario
    if sdk == "typescript":
        from .typescript import TypeScriptScenario as kind
    elif runtime == "temporal":
        from .runtimes import TemporalScenario as kind
    elif runtime == "restate":
        from .runtimes import RestateScenario as kind
    elif runtime == "langgraph-server":
        from .langgraph_server import LangGraphServerScenario as kind
    scenario = kind(name=name, world=world, provider=provider, interactive=interactive, say=say)
    try:
        return scenario.run()
    except Exception as exc:  # a misbehaving scenario is a result, with what is known so far
        return {
            "scenario": name,
            "title": ALL_SCENARIOS[name],
            "provider": provider,
            "runtime": runtime,
            "run_id": scenario.run_id,
            "case_id": scenario.case_reference or None,
            "ok": False,
            "problems": [f"{type(exc).__name__}: {exc}"],
            "notes": scenario.notes,
        }
