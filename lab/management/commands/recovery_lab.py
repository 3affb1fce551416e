"""``python manage.py recovery_lab``: break the credential, keep the execution -- the four scenarios, for real.

It starts what the scenarios need on free loopback ports and stops it at the end:
Revive's HTTP server (a thread of this process), the lab identity provider (allauth's
OIDC server, a process of its own), and the provider stand-in (mail API, Entra / Auth0
token endpoint). Then it runs each scenario of ``lab.scenarios`` (named in ``lab.world``), printing every
transition as the audit log records it, and a summary per scenario.
"""

from __future__ import annotations

import json
import logging
import time

from django.core.management.base import BaseCommand, CommandError

from lab.runtimes import RUNTIMES
from lab.session import run_lab
from lab.world import ALL_SCENARIOS, PROVIDERS, SCENARIO_PROVIDERS, SCENARIOS


class Command(BaseCommand):
    help = "Run the recovery lab: inject each credential fault for real and watch the original run resume."

    def add_arguments(self, parser):
        parser.add_argument(
            "--scenario",
            choices=[*ALL_SCENARIOS, "all"],
            default="all",
            help="One scenario, or the product page's four (all, default). cae (Entra continuous "
            "access evaluation) runs with --provider entra.",
        )
        parser.add_argument(
            "--runtime",
            choices=[*RUNTIMES, "all"],
            default="langgraph",
            help="The durable runtime the briefing runs on: langgraph (in-process, default), "
            "langgraph-server (the lab starts a LangGraph Agent Server, `langgraph dev` from "
            ".venv-lgserver, made by scripts/setup --test), temporal (the lab starts the Temporal "
            "test server and worker processes), restate (restate-server and the service "
            "process), or all of them one after the other, with one summary table.",
        )
        parser.add_argument(
            "--provider",
            choices=PROVIDERS,
            default="entra",
            help="Whose refusal the worker sees: Microsoft Entra's documented AADSTS700082 (entra, "
            "default, the product page's story) or Auth0's, served by the local token endpoint; "
            "the lab OIDC provider revoking the refresh token (oidc); or auth0-token-vault: the "
            "upstream grant behind "
            "an Auth0 Token Vault connected account disappears and the owner re-links it.",
        )
        parser.add_argument(
            "--sdk",
            choices=("python", "typescript"),
            default="python",
            help="The language of the workflow's worker: the Python SDK's LangGraph graph (default), or "
            "the TypeScript SDK's LangGraph.js graph in a Node process (needs `cd sdk/typescript "
            "&& npm ci && npm run build`).",
        )
        parser.add_argument(
            "--interactive",
            action="store_true",
            help="Print the owner's reconnect link and wait for a person to sign in.",
        )
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print the results as JSON only.")

    def handle(
        self, *args, scenario: str, runtime: str, provider: str, sdk: str, interactive: bool, as_json: bool, **options
    ):
        started = time.monotonic()
        out = (lambda s: None) if as_json else self.stdout.write
        for name in ("celery", "kombu", "django.request", "cases"):  # the timeline is the lab's output; chatter is not
            logging.getLogger(name).setLevel(logging.ERROR)
        runtimes = list(RUNTIMES) if runtime == "all" else [runtime]
        if sdk == "typescript" and runtimes != ["langgraph"]:
            raise CommandError("--sdk typescript runs on --runtime langgraph only", returncode=2)
        allowed = SCENARIO_PROVIDERS.get(scenario)
        if allowed and provider not in allowed:
            raise CommandError(f"--scenario {scenario} needs --provider {' or '.join(allowed)}", returncode=2)
        if "langgraph-server" in runtimes:
            from lab.langgraph_server import server_missing

            if missing := server_missing():
                raise CommandError(missing, returncode=2)
        if sdk == "typescript":
            from lab.typescript import worker_missing

            if missing := worker_missing():
                raise CommandError(missing)
        names = list(SCENARIOS) if scenario == "all" else [scenario]
        results = []
        try:
            for each in runtimes:
                results += self.run_lab(
                    names, provider=provider, interactive=interactive, out=out, sdk=sdk, runtime=each
                )
        except KeyboardInterrupt:  # run_lab's cleanup has run on the way out: servers and workers are stopped
            self.stderr.write(
                f"\nInterrupted after {time.monotonic() - started:.0f} s: the lab stopped its servers "
                "and worker processes."
            )
            raise SystemExit(130) from None
        elapsed = time.monotonic() - started
        ok = all(r["ok"] for r in results)
        if as_json:
            self.stdout.write(
                json.dumps(
                    {
                        "ok": ok,
                        "seconds": round(elapsed, 2),
                        "provider": provider,
                        "runtime": runtime,
                        "sdk": sdk,
                        "scenarios": results,
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            self.print_summary(results, elapsed)
            if len(runtimes) > 1:
                self.print_table(results, runtimes, names)
        if not ok:
            raise SystemExit(1)

    # ------------------------------------------------------------------------------------------

    def run_lab(
        self,
        names: list[str],
        *,
        provider: str,
        interactive: bool,
        out,
        sdk: str = "python",
        runtime: str = "langgraph",
    ) -> list[dict]:
        return run_lab(
            names, provider=provider, interactive=interactive, out=out, style=self.style, sdk=sdk, runtime=runtime
        )

    def print_table(self, results: list[dict], runtimes: list[str], names: list[str]) -> None:
        """One line per runtime, one column per scenario: OK or FAILED."""
        out = self.stdout.write
        by = {(r.get("runtime"), r["scenario"]): r for r in results}
        width = max(len(n) for n in names) + 2
        first = max(len(r) for r in ("runtime", *runtimes)) + 2
        out(self.style.MIGRATE_HEADING("\nRuntime × scenario"))
        out("  " + f"{'runtime':<{first}}" + "".join(f"{n:<{width}}" for n in names))
        for each in runtimes:
            cells = []
            for n in names:
                r = by.get((each, n))
                cell = f"{'OK' if r and r['ok'] else 'FAILED':<{width}}"
                cells.append(self.style.SUCCESS(cell) if r and r["ok"] else self.style.ERROR(cell))
            out("  " + f"{each:<{first}}" + "".join(cells))

    def print_summary(self, results: list[dict], elapsed: float) -> None:
        out = self.stdout.write
        out(self.style.MIGRATE_HEADING("\nRecovery incident records"))
        for r in results:
            head = self.style.SUCCESS("OK ") if r["ok"] else self.style.ERROR("FAILED")
            out(f"\n  {head} {r['title']} ({r['scenario']}, {r.get('runtime', 'langgraph')})")
            rows = [("Run", r.get("run_id")), ("Case", r.get("case_id"))]
            if "checkpoint" in r:
                rows += [
                    ("Checkpoint", r["checkpoint"]),
                    ("Action key", r["action_key"]),
                    ("Provider signal", f"{r['failure_class']} {r['provider_code']}"),
                    ("Credential generation", f"{r['generation_before']:02d} → {r['generation_after']:02d}"),
                    (
                        "Duplicate effects",
                        f"{r['duplicate_effects_observed']} observed "
                        f"({r['messages_accepted']} message(s) accepted by the mail service)",
                    ),
                    ("Send", f"{r['send_state']}, {r['send_attempts']} attempt(s)"),
                ]
                notes = r.get("notes") or {}
                if notes.get("refused"):
                    refused = notes["refused"]
                    rows.append(("Refused identity", _identity(refused.get("presented"))))
                    rows.append(("Expected identity", _identity(refused.get("expected"))))
                if notes.get("after_timeout"):
                    rows.append(
                        (
                            "After the timeout",
                            f"{notes['after_timeout']} → {r['send_state']} (found by its idempotency key)",
                        )
                    )
                if notes.get("killed_pid"):
                    how = f"stopped ({notes['stop_signal']})" if notes.get("stop_signal") else "killed"
                    rows.append(
                        ("Worker process", f"{notes['killed_pid']} {how}; brief sent by pid {r['brief_sent_by_pid']}")
                    )
                    if notes.get("workers"):
                        rows.append(("Workers", " → ".join(notes["workers"])))
                rows.append(("Took", f"{r['seconds']:.1f} s"))
            for name, value in rows:
                out(f"    {name:<22} {value}")
            for problem in r["problems"]:
                out(self.style.ERROR(f"    problem: {problem}"))
        ok = all(r["ok"] for r in results)
        verdict = (
            self.style.SUCCESS(f"\n{len(results)} scenario(s) as expected: same runs resumed, nothing sent twice.")
            if ok
            else self.style.ERROR(f"\n{sum(not r['ok'] for r in results)} scenario(s) misbehaved.")
        )
        out(verdict)
        out(f"Lab time: {elapsed:.1f} s")
        out(
            "The lab in the browser: .venv/bin/python manage.py createsuperuser (once), "
            ".venv/bin/python manage.py runserver, then open http://127.0.0.1:8000/lab/ (staff only)"
        )


def _identity(evidence: dict | None) -> str:
    if not evidence:
        return "—"
    return ", ".join(f"{k}={v}" for k, v in evidence.items() if k != "label") + (
        f" ({evidence['label']})" if evidence.get("label") else ""
    )
