"""The lab identity provider as one real process: migrate, seed, serve, in a single start-up.

    python -m lab.idp.process --port 0 --redirect-uri http://127.0.0.1:8000/accounts/oidc/lab-idp/login/callback/

It runs under ``lab.idp.settings`` (allauth's OpenID Connect provider, see
docs/reconnect.md) with its own SQLite file under ``REVIVE_VAR_DIR``, and prints one
JSON line -- ``{"url": ..., "users": {...}}`` -- once it accepts connections. The
client secret comes from ``REVIVE_LAB_IDP_CLIENT_SECRET`` so it never appears on a
command line. The parent stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris")
    ap.add_argument("--client-id", default="revive-lab")
    ap.add_argument("--password", default="lab-password-1")
    args = ap.parse_args()

    os.environ["DJANGO_SETTINGS_MODULE"] = "lab.idp.settings"
    os.environ.setdefault("REVIVE_IDP_FAST_PASSWORDS", "1")  # seeded lab users; nothing real signs in here
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0, interactive=False)
    out = io.StringIO()
    redirect_args = [a for uri in args.redirect_uris for a in ("--redirect-uri", uri)]
    # "--option=value": a generated secret may begin with "-", which argparse would read as an option
    call_command(
        "idp_seed",
        *redirect_args,
        "--client-id",
        args.client_id,
        f"--client-secret={os.environ['REVIVE_LAB_IDP_CLIENT_SECRET']}",
        "--password",
        args.password,
        stdout=out,
    )
    users = json.loads(out.getvalue())["users"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass

    server = ThreadedWSGIServer(("127.0.0.1", args.port), Quiet, allow_reuse_address=True)
    server.daemon_threads = True
    server.set_app(get_wsgi_application())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid(), "users": users}), flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
