"""Where the time of one protected action goes inside Revive: begin + commit through the WSGI application, in-process.

No HTTP server and no client: the requests are handed straight to ``revive_site.wsgi.application``
(the same application gunicorn serves), on a fresh PostgreSQL database. Prints, per call, the
statements PostgreSQL received (libpq's trace, BEGIN/COMMIT and health checks included), the mean
time per call, and the profile's top entries.

    .venv/bin/python bench/profile_request.py [--actions 2000] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import bench_database, stop_on_sigterm  # noqa: E402


def wsgi_request(
    app, method: str, path: str, *, body=None, raw: bytes | None = None, key: str | None = None, headers=None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request to a WSGI application, in-process: (status, response headers, body). ``raw`` is sent as is."""
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else b""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(data),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "REMOTE_ADDR": "127.0.0.1",
    }
    if key is not None:
        environ["HTTP_X_API_KEY"] = key
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list = []
    chunks = app(environ, lambda s, h, exc_info=None: started.append((s, h)))
    payload = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    status, response_headers = started[0]
    return int(status.split()[0]), list(response_headers), payload


def wsgi_call(app, method: str, path: str, body: dict | None, key: str) -> tuple[int, bytes]:
    status, _, payload = wsgi_request(app, method, path, body=body, key=key)
    return status, payload


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    stop_on_sigterm()
    with bench_database():
        from bench.pgtrace import count_statements
        from cases import services
        from revive_site.wsgi import application

        services.connection_create(
            connection_id="conn_bench", provider="entra", owner_email="o@example.com", provider_subject="oid"
        )
        services.run_register(
            run_id="run_bench", runtime="langgraph", runtime_ref={}, workflow_name="bench", actor="bench"
        )
        services.checkpoint_record(run_id="run_bench", checkpoint_id="01", actor="bench")
        _, key = services.api_key_create(name="bench")
        base = "/api/v1/runs/run_bench/actions"

        def one(i: int) -> None:
            status, body = wsgi_call(
                application,
                "POST",
                f"{base}/a{i}/begin",
                {"checkpoint_id": "01", "connection_id": "conn_bench", "generation": 1},
                key,
            )
            assert status == 200 and json.loads(body)["decision"] == "execute", (status, body)
            status, body = wsgi_call(
                application, "POST", f"{base}/a{i}/commit", {"generation": 1, "result": {"ok": True}}, key
            )
            assert status == 200, (status, body)

        for i in range(50):  # warm: imports, the key cache, the connection
            one(i)
        with count_statements() as trace:
            wsgi_call(
                application,
                "POST",
                f"{base}/probe/begin",
                {"checkpoint_id": "01", "connection_id": "conn_bench", "generation": 1},
                key,
            )
        begin_trace = trace
        with count_statements() as trace:
            wsgi_call(application, "POST", f"{base}/probe/commit", {"generation": 1, "result": {"ok": True}}, key)
        print(f"begin: {len(begin_trace)} statements, {begin_trace.round_trips} round trips\n{begin_trace.summary()}")
        print(f"commit: {len(trace)} statements, {trace.round_trips} round trips\n{trace.summary()}")

        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(50, 50 + args.actions):
            one(i)
        plain = (time.perf_counter() - t0) / args.actions * 1000
        cpu = (time.process_time() - c0) / args.actions * 1000
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(50 + args.actions, 50 + 2 * args.actions):
            one(i)
        profiler.disable()
        print(
            f"\nbegin + commit in-process (no HTTP): {plain:.3f} ms per action (without the profiler), of which "
            f"{cpu:.3f} ms CPU in this process (Django, ninja, psycopg) and the rest waiting for PostgreSQL\n"
        )
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
