"""Tracing: spans reach a real OTLP/HTTP receiver on loopback, continuing the SDK's traceparent; off, nothing loads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from audit.models import AuditEvent
from cases import services
from revive_sdk import Revive
from tests.operable.conftest import base_env
from tests.operable.otlp_receiver import OtlpReceiver
from tests.runtimes.conftest import REPO_ROOT

SERVER, CLIENT = 2, 3  # OTLP span kinds


def _wait_for(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


def test_a_protected_action_is_traced_from_the_sdk_through_django_into_postgresql(served):
    _, raw = services.api_key_create(name="tracing")
    services.connection_create(
        connection_id="conn_traced",
        provider="entra",
        owner_email="o@example.com",
        provider_subject="s",
        provider_tenant="t",
    )
    with OtlpReceiver() as receiver:
        server = served(
            collect=False,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_SERVICE_NAME="revive-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with Revive(server.url, raw) as revive:
            revive.register_run(
                run_id="run_traced", runtime="langgraph", workflow_name="wf", runtime_ref={"thread_id": "t"}
            )
            revive.protect_action(
                run_id="run_traced",
                checkpoint_id="05",
                connection_id="conn_traced",
                action_key="send_exec_05",
                execute=lambda ctx: {"sent": True},
            )

        [trace_id] = set(
            AuditEvent.objects.filter(run_id="run_traced", entity_type="action").values_list("trace_id", flat=True)
        )

        def begin_and_commit():
            names = {s.name for s in receiver.spans if s.trace_id == trace_id and s.kind == SERVER}
            return any(n.endswith("/begin") for n in names) and any(n.endswith("/commit") for n in names) and names

        names = _wait_for(begin_and_commit, "the begin and commit server spans")
        in_trace = [s for s in receiver.spans if s.trace_id == trace_id]

    assert all(s.service == "revive-test" for s in in_trace)
    servers = [s for s in in_trace if s.kind == SERVER]
    assert any("begin" in name for name in names) and any("commit" in name for name in names), names
    assert all(s.parent_span_id for s in servers), "each server span continues the SDK's traceparent"
    statements = [s for s in in_trace if s.kind == CLIENT and s.attributes.get("db.system") == "postgresql"]
    server_ids = {s.span_id for s in servers}
    assert statements and all(s.parent_span_id in server_ids for s in statements), "psycopg spans under the requests"


def test_tracing_off_starts_nothing():
    """Unset, Revive loads no exporter or instrumentation and installs no tracer provider or middleware.

    (LangSmith, which LangGraph imports, loads OpenTelemetry's API on its own when the package is installed; Revive
    itself only looks at ``sys.modules``.)
    """
    env = base_env("", REPO_ROOT / "var-unused", REVIVE_VAR_DIR=str(REPO_ROOT / "var"))
    env.pop("DATABASE_URL")
    code = """
import sys, revive_site.wsgi
from django.conf import settings
from django.test import Client
assert Client().get('/api/v1/docs').status_code == 200
loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.instrumentation', 'opentelemetry.exporter')))
middleware = [m for m in settings.MIDDLEWARE if 'opentelemetry' in m]
provider = type(sys.modules['opentelemetry.trace'].get_tracer_provider()).__name__ if 'opentelemetry.trace' in sys.modules else '-'
print(loaded, middleware, provider)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() in (["[]", "[]", "ProxyTracerProvider"], ["[]", "[]", "-"]), done.stdout


@pytest.mark.django_db
def test_the_case_page_shows_the_trace_the_worker_sent(api, client, make_connection, make_run):
    from django.contrib.auth import get_user_model

    from cases.models import RecoveryCase
    from tests.conftest import DEAD_GRANT

    conn, run = make_connection(), make_run()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"HTTP_X_API_KEY": api.key, "HTTP_TRACEPARENT": f"00-{trace}-00f067aa0ba902b7-01"}
    body = {"checkpoint_id": "05", "connection_id": conn.pk, "generation": 1}
    client.post(f"/api/v1/runs/{run.pk}/actions/send/begin", body, content_type="application/json", **headers)
    answer = client.post(
        f"/api/v1/runs/{run.pk}/actions/send/fail",
        {"generation": 1, "error": DEAD_GRANT},
        content_type="application/json",
        **headers,
    ).json()
    assert answer["outcome"] == "parked"
    case = RecoveryCase.objects.get(reference=answer["case_id"])
    assert AuditEvent.objects.get(case_id=case.pk, action="case.opened").trace_id == trace

    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    page = client.get(f"/admin/cases/recoverycase/{case.pk}/change/").content.decode()
    assert f"trace <code>{trace}</code>" in page
    search = client.get("/admin/audit/auditevent/", {"q": trace}).content.decode()
    assert "case.opened" in search
