"""One live Revive server for an SDK's conformance runner that is not in Python (``sdk/typescript``'s tests).

    .venv/bin/python tests/conformance/live_server.py

Creates its own PostgreSQL database (``test_revive_<pid>``, migrated, as pytest does; ``DATABASE_URL`` picks the
server), serves the whole site over HTTP on a free loopback port in a thread (Django's threaded WSGI server, as
pytest-django's live server), creates a worker API key, and prints one line of JSON on stdout::

    {"url": "http://127.0.0.1:PORT", "api_key": "rvk_..."}

Then it reads one JSON object a line on stdin, performs it (``tests/conformance/ops.py``) and answers one line
(``{"ok": true, "answer": {...}}`` or ``{"ok": false, "error": "..."}``). At the end of stdin it stops the server
and drops the database. Everything else it would print goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "sdk" / "python")]
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the console e-mail backend, warnings: all to stderr

    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.db import connection, connections

    from tests.conformance import ops

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):  # requests are not the runner's business
            pass

    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="revive-live-server", daemon=True)
    thread.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    try:
        api_key = ops.api_key_create(name=f"conformance-{os.getpid()}")
        protocol.write(
            json.dumps({"url": f"http://127.0.0.1:{server.server_port}", "api_key": api_key, "database": test_db})
            + "\n"
        )
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                answer = {"ok": True, "answer": ops.perform(json.loads(line))}
            except Exception as exc:  # the runner shows it as the step's failure
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            protocol.write(json.dumps(answer) + "\n")
    except (ValueError, OSError):
        pass  # stdin closed by SIGTERM
    finally:
        ops.stop_standins()
        server.shutdown()
        server.server_close()
        connections.close_all()
        connection.creation.destroy_test_db(test_db, verbosity=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
