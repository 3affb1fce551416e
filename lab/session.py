"""One lab session: start the services the scenarios need, run them, stop everything.

Used by ``manage.py recovery_lab`` (Revive served from a thread of its own) and by the
``/lab/`` page (Revive is the server that answered the page).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.test.utils import override_settings

from cases import services
from cases.runtimes import adapter_for, reset_adapters
from reauth.provider_settings import LAB_PROVIDER_ID

from . import waiting
from .briefing import GRAPH_NAME
from .idp.driver import LabIdp
from .nango_standin import NangoStandIn
from .processes import Pidfile
from .provider_standin import ProviderStandIn
from .runtimes import start_server
from .scalekit_standin import ScalekitStandIn
from .scenarios import run_scenario
from .timeline import LiveTimeline
from .token_vault_standin import TokenVaultStandIn
from .world import ALL_SCENARIOS, LabWorld, socialaccount_providers_for, token_vault_settings

# One session at a time per process: it swaps process-wide settings (sign-in apps, e-mail backend) while it runs.
SESSION_LOCK = threading.Lock()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def serve_revive() -> tuple[ThreadedWSGIServer, str]:
    """This project's WSGI app on a free loopback port, in a thread."""
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler, allow_reuse_address=True)
    server.daemon_threads = True
    # Not get_wsgi_application(): it runs django.setup() again, which reconfigures logging and undoes the
    # command's quieting (stray log lines in the middle of the timeline).
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, name="revive-http", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def _compile_briefing(box: dict) -> None:
    try:
        adapter_for("langgraph").graph(GRAPH_NAME)  # compile the briefing and open the checkpointer
    except Exception as exc:  # reported by the caller
        box["error"] = exc


def children_dir() -> Path:
    return Path(settings.VAR_DIR) / "lab" / "children"


def reap_leftovers(out: Callable[[str], None] = lambda line: None) -> list[int]:
    """Kill what earlier lab sessions started and left running because they were killed before their clean-up.

    Every session lists its children (pid and kernel start time) in ``var/lab/children/<pid>.json``; a file whose
    owner is gone is reaped, and a pid is killed only if it is still the process that was recorded."""
    killed: list[int] = []
    for path in sorted(children_dir().glob("*.json")):
        pids = Pidfile.reap(path)
        if pids:
            out(f"  reaped {len(pids)} process(es) left by a lab run that was killed: {', '.join(map(str, pids))}")
        killed += pids
    return killed


class ScalekitBeat:
    """Runs ``reauth.scalekit_accounts_poll`` every half second, as the beat schedule does every minute."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, name="scalekit-beat", daemon=True)

    def start(self) -> ScalekitBeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from django.db import connection

        from reauth.tasks import scalekit_accounts_poll

        while not self._stop.wait(self.interval):
            try:
                started = time.monotonic()
                result = scalekit_accounts_poll.apply()
                if os.environ.get("REVIVE_LAB_DEBUG_BEAT"):
                    print(f"beat {time.monotonic() - started:.2f}s {result.result}", file=sys.stderr)
                if result.failed():
                    logging.getLogger("lab").warning("scalekit poll failed: %r", result.result)
            finally:
                connection.close()  # a fresh connection (and snapshot) for each poll, as each beat task gets


def run_lab(
    names: list[str],
    *,
    provider: str = "oidc",
    interactive: bool = False,
    out: Callable[[str], None],
    style=None,
    revive_url: str | None = None,
    on_result: Callable[[dict], None] | None = None,
    sdk: str = "python",
    runtime: str = "langgraph",
    on_run: Callable[[str], None] | None = None,
) -> list[dict]:
    if not SESSION_LOCK.acquire(blocking=False):
        raise RuntimeError("a lab session is already running in this process")
    heading = style.MIGRATE_HEADING if style else (lambda s: s)
    session = Path(settings.VAR_DIR) / "lab" / f"session-{os.getpid()}-{secrets.token_hex(2)}"
    (session / "mail").mkdir(parents=True, exist_ok=True)
    reap_leftovers(out)
    children = Pidfile(children_dir() / f"{os.getpid()}-{secrets.token_hex(2)}.json")
    standin = ProviderStandIn(provider=provider if provider in ("entra", "auth0") else "entra").start()
    vault = TokenVaultStandIn().start()
    nango = NangoStandIn().start() if provider == "nango" else None
    scalekit = ScalekitStandIn().start() if provider == "scalekit" else None
    beat = None
    server = None
    if revive_url is None:
        server, revive_url = serve_revive()
    idp = timeline = lab_key = runtime_server = None
    results: list[dict] = []
    try:
        out(heading("Recovery lab — break the credential, keep the execution"))
        out(f"  Revive       {revive_url}")
        waiting.progress = out
        runtime_server = start_server(runtime, session, children)
        if runtime_server is not None:
            out(f"  {getattr(runtime_server, 'label', runtime):<12} {runtime_server.describe()}")
        box: dict = {}
        compiler = threading.Thread(target=_compile_briefing, args=(box,))
        compiler.start()
        # Started from this thread, which runs the whole session: the provider dies with it (lab.processes).
        try:
            idp = LabIdp.start(
                var_dir=Path(settings.VAR_DIR) / "lab-idp",
                children=children,
                redirect_uris=[
                    f"{revive_url}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/",
                    *[s.callback_url for s in (nango, scalekit) if s],
                ],
            )
        finally:
            compiler.join()
        if "error" in box:
            raise box["error"]
        out(f"  identity     {idp.url}  (allauth OIDC provider, pid {idp.process.pid})")
        out(f"  mail + token {standin.url}  (provider stand-in)")
        broker_settings = {}
        if nango is not None:
            nango.idp, nango.webhook_url = idp, f"{revive_url}/webhooks/nango/default"
            broker_settings = dict(
                REVIVE_NANGO_URL=nango.url,
                REVIVE_NANGO_CONNECT_URL=nango.connect_url,
                REVIVE_NANGO_SECRET_KEY=nango.secret_key,
                REVIVE_NANGO_WEBHOOK_SIGNING_KEY=nango.signing_key,
            )
            out(
                f"  nango        {nango.url}  (Nango stand-in: connect sessions, Connect UI, connections, signed webhooks)"
            )
        if scalekit is not None:
            scalekit.idp = idp
            broker_settings = dict(
                REVIVE_SCALEKIT_ENVIRONMENT_URL=scalekit.url,
                REVIVE_SCALEKIT_CLIENT_ID=scalekit.client_id,
                REVIVE_SCALEKIT_CLIENT_SECRET=scalekit.client_secret,
            )
            out(f"  scalekit     {scalekit.url}  (Scalekit stand-in: connected accounts, magic links)")
        lab_key, key = services.api_key_create(name=f"lab-{session.name}", actor="lab")
        world = LabWorld(
            revive_url=revive_url,
            api_key=key,
            idp=idp,
            standin=standin,
            mailbox=session / "mail",
            var_dir=session,
            vault=vault,
            children=children,
            runtime_server=runtime_server,
            nango=nango,
            scalekit=scalekit,
            on_run=on_run,
        )
        world.export_env()
        with override_settings(
            PUBLIC_BASE_URL=revive_url,
            SOCIALACCOUNT_PROVIDERS=socialaccount_providers_for(idp),
            EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
            EMAIL_FILE_PATH=str(session / "mail"),
            REVIVE_AUTH0_TOKEN_VAULT=token_vault_settings(vault),
            **(runtime_server.settings() if runtime_server is not None else {}),
            **broker_settings,
        ):
            timeline = LiveTimeline(out, style=style).start()
            waiting.progress = lambda line: (timeline.flush(), out(line))
            if scalekit is not None:
                beat = ScalekitBeat().start()  # what Celery beat does in production: poll the connected accounts
            for name in names:
                timeline.flush()
                out(heading(f"\n▶ {ALL_SCENARIOS[name]}  ({name}, provider {provider}, {runtime}, {sdk} worker)"))
                result = run_scenario(
                    name,
                    world,
                    provider=provider,
                    interactive=interactive,
                    sdk=sdk,
                    runtime=runtime,
                    say=lambda line: (timeline.flush(), out(line)),
                )
                timeline.flush()
                results.append(result)
                if on_result:
                    on_result(result)
                ok = "✓ as expected" if result["ok"] else "✗ " + "; ".join(result["problems"])
                out(f"  {(style.SUCCESS if style and result['ok'] else style.ERROR if style else str)(ok)}")
            timeline.stop()
    finally:
        waiting.progress = None
        # First: the session's worker key dies with the session, however it ends (Ctrl-C raises KeyboardInterrupt here).
        if lab_key is not None:
            services.api_key_revoke(key_id=lab_key.pk, actor="lab")
        if beat is not None:
            beat.stop()
        if timeline is not None:
            timeline.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
        standin.stop()
        vault.stop()
        for broker in (nango, scalekit):
            if broker is not None:
                broker.stop()
        if idp is not None:
            idp.stop()
        reset_adapters()
        if runtime_server is not None:
            runtime_server.stop()
        children.close()
        shutil.rmtree(session, ignore_errors=True)
        SESSION_LOCK.release()
    return results
