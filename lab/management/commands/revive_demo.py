"""One protected action through the whole recovery contract, for real, on whatever database is configured.

The worker API is served over HTTP on loopback and driven through the Python SDK;
the provider's token endpoint and mail API are a local stand-in that counts every
message it accepts, so "duplicate effects" is measured, not typed.
"""

from __future__ import annotations

import json
import secrets
import threading

import httpx
from django.core.management.base import BaseCommand, CommandError
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application

from cases import services
from cases.models import Action, Connection, RecoveryCase, Run
from lab.provider_standin import ProviderStandIn
from lab.timeline import TimelinePrinter
from revive_sdk import ProviderError, Revive, RunParked


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def serve_revive() -> tuple[ThreadedWSGIServer, str]:
    """Serve this Django project's WSGI app on a free loopback port, in a thread."""
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler, allow_reuse_address=True)
    server.set_app(get_wsgi_application())
    threading.Thread(target=server.serve_forever, name="revive-api", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


class Briefing:
    """The seed's workflow, reduced to its last two checkpoints: 04 records a summary, 05 sends the brief."""

    def __init__(self, revive: Revive, provider: ProviderStandIn, *, run_id: str, connection_id: str) -> None:
        self.revive, self.provider, self.run_id, self.connection_id = revive, provider, run_id, connection_id
        self.http = httpx.Client(base_url=provider.url, timeout=5)

    def credential(self) -> str:
        """Refresh the access token at the provider's token endpoint (it answers the provider's error once revoked)."""
        resp = self.http.post("/oauth2/v2.0/token", data={"grant_type": "refresh_token"})
        if resp.status_code != 200:
            raise ProviderError(resp.status_code, resp.text, dict(resp.headers))
        return resp.json()["access_token"]

    def send_brief(self, ctx) -> dict:
        resp = self.http.post("/v1.0/me/sendMail", headers={"Authorization": f"Bearer {ctx.credential}", "Idempotency-Key": ctx.idempotency_key},
                              json={"subject": "Nightly executive briefing", "to": "exec-team@contoso.example"})
        if resp.status_code >= 400:
            raise ProviderError(resp.status_code, resp.text, dict(resp.headers))
        return resp.json()

    def find_brief(self, ctx) -> dict | None:
        found = self.http.get("/v1.0/me/messages", params={"idempotencyKey": ctx.idempotency_key}).json()["value"]
        return found[0] if found else None

    def run(self) -> dict:
        common = dict(run_id=self.run_id, connection_id=self.connection_id)
        summary = self.revive.protect_action(checkpoint_id="04", action_key="record_summary_04", **common,
                                             execute=lambda ctx: {"summary": "3 meetings, 2 risks", "key": ctx.idempotency_key})
        sent = self.revive.protect_action(checkpoint_id="05", action_key="send_exec_05", credential=self.credential,
                                          execute=self.send_brief, reconcile=self.find_brief, **common)
        return {"summary": summary, "sent": sent}


class Command(BaseCommand):
    help = "Run one protected action through rejection, parking, generation advance and resume, and count duplicate effects."

    def add_arguments(self, parser):
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print the result as JSON only.")

    def handle(self, *args, as_json: bool = False, **options):
        out = (lambda s: None) if as_json else self.stdout.write
        suffix = secrets.token_hex(3)
        run_id, connection_id = f"run_7f2_{suffix}", f"conn_microsoft_ops_{suffix}"

        provider = ProviderStandIn(provider="entra").start()
        server, url = serve_revive()
        timeline = TimelinePrinter(out, style=self.style)
        try:
            services.connection_create(connection_id=connection_id, provider="entra", owner_email="ops-owner@contoso.example",
                                       provider_subject="oid-7c1e", provider_tenant="tid-contoso", display_name="Microsoft ops mailbox",
                                       actor="demo")
            _, key = services.api_key_create(name=f"demo-worker-{suffix}", actor="demo")
            with Revive(url, key) as revive:
                revive.register_run(run_id=run_id, runtime="langgraph", workflow_name="Nightly executive briefing",
                                    runtime_ref={"thread_id": run_id})
                for n, label in enumerate(["collect calendar", "collect inbox", "rank risks", "record summary", "prepare brief"], 1):
                    revive.record_checkpoint(run_id=run_id, checkpoint_id=f"{n:02d}", label=f"{n:02d} / {label}")
                flow = Briefing(revive, provider, run_id=run_id, connection_id=connection_id)
                out(self.style.MIGRATE_HEADING(f"Revive demo — run {run_id}, connection {connection_id}, API at {url}"))
                timeline.flush()

                out(self.style.MIGRATE_HEADING("\n1. The provider revokes the grant; the worker reaches 05 / prepare brief"))
                provider.revoked = True
                try:
                    flow.run()
                    raise CommandError("the run was not parked although its credential was rejected")
                except RunParked as parked:
                    case_id = parked.case_id
                timeline.flush()

                out(self.style.MIGRATE_HEADING("\n2. The owner reconnects the same identity (verified reconnect: see docs/reconnect.md)"))
                provider.revoked = False
                generation_before = Connection.objects.get(pk=connection_id).current_generation
                services.case_reauthorize(case_id=case_id, actor="owner:ops-owner@contoso.example",
                                          evidence={"tid": "tid-contoso", "oid": "oid-7c1e"})
                services.case_resume_begin(case_id=case_id, actor="system:resume")
                timeline.flush()

                out(self.style.MIGRATE_HEADING("\n3. The same run resumes at its checkpoint; then the resume is delivered twice"))
                first = flow.run()
                second = flow.run()
                timeline.flush()
        finally:
            server.shutdown()
            server.server_close()
            provider.stop()

        case = RecoveryCase.objects.get(reference=case_id)
        send = Action.objects.get(run_id=run_id, action_key="send_exec_05")
        summary_action = Action.objects.get(run_id=run_id, action_key="record_summary_04")
        result = {
            "run_id": run_id,
            "case_id": case_id,
            "case_state": case.state,
            "run_state": Run.objects.get(pk=run_id).state,
            "checkpoint": "05 / prepare brief",
            "action_key": "send_exec_05",
            "failure_class": case.failure_class,
            "provider_code": case.provider_code,
            "generation_before": generation_before,
            "generation_after": Connection.objects.get(pk=connection_id).current_generation,
            "messages_accepted": provider.accepted_count(),
            "duplicate_effects_observed": provider.duplicate_effects(),
            "summary_attempts": summary_action.attempts,
            "send_attempts": send.attempts,
            "replayed_result_matches": first == second,
        }
        problems = []
        if result["duplicate_effects_observed"] or result["messages_accepted"] != 1:
            problems.append(f"the mail service accepted {result['messages_accepted']} message(s)")
        if result["case_state"] != "resumed":
            problems.append(f"the case ended {result['case_state']}, not resumed")
        if result["generation_after"] != result["generation_before"] + 1:
            problems.append("the generation did not advance by exactly one")
        if summary_action.attempts != 1 or not result["replayed_result_matches"]:
            problems.append("a committed action executed again instead of replaying")
        result["ok"] = not problems
        result["problems"] = problems

        if as_json:
            self.stdout.write(json.dumps(result, indent=2))
        else:
            out(self.style.MIGRATE_HEADING("\nIncident record"))
            rows = [
                ("Case", result["case_id"]), ("Run", f"{run_id} (same run, {result['run_state']})"),
                ("Checkpoint", result["checkpoint"]), ("Action key", result["action_key"]),
                ("Provider signal", f"{result['failure_class']} {result['provider_code']}"),
                ("Credential generation", f"{result['generation_before']:02d} → {result['generation_after']:02d}"),
                ("Messages accepted", result["messages_accepted"]),
                ("Duplicate effects", f"{result['duplicate_effects_observed']} observed (counted by the mail service)"),
            ]
            for name, value in rows:
                out(f"  {name:<22} {value}")
            out(self.style.SUCCESS("\nOK: same run resumed, nothing sent twice.") if result["ok"] else self.style.ERROR("\nFAILED: " + "; ".join(problems)))
        if problems:
            raise SystemExit(1)
