"""The Restate operator routes (seed 002) through Django's test client, against a real restate-server.

The engine, the probe service and the helpers are in ``conftest.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading

import pytest

from audit.models import OperationAudit
from cases import services
from cases.models import ApiKey

from .conftest import OBJECT, WORKFLOW, free_port

BASE = "/api/v2/admin/operator/restate"
ROUTES = ["doctor", "force-redeploy", "cleanup-stale-deployments", "recover-stuck-workflow"]
_seq = itertools.count(1)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_key(db) -> str:
    _, raw = services.api_key_create(name=f"operator-{next(_seq)}", role=ApiKey.Role.OPERATOR, system_operate=True)
    return raw


@pytest.fixture
def op(client, operator_key):
    """POST to an operator route with the operator key (or another, or none)."""

    class Operator:
        key = operator_key

        def post(self, route: str, body=None, *, key: str | None = operator_key, raw: str | None = None, **headers):
            extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
            if key:
                extra["HTTP_X_API_KEY"] = key
            data = raw if raw is not None else json.dumps(body if body is not None else {})
            return client.post(f"{BASE}/{route}", data=data, content_type="application/json", **extra)

    return Operator()


def _only_audit_row(response) -> OperationAudit:
    request_id = response.headers["X-Request-Id"]
    rows = list(OperationAudit.objects.filter(request_id=request_id))
    assert len(rows) == 1, f"expected one audit row for {request_id}, found {len(rows)}"
    return rows[0]


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code, body
    assert body["requestId"] == response.headers["X-Request-Id"]
    return body


# --------------------------------------------------------------------------- quickstart


def test_quickstart_doctor_force_redeploy_doctor(op, restate):
    before = op.post("doctor", {})
    assert before.status_code == 200, before.content
    readout = before.json()
    assert readout["ingress"]["status"] == "ok" and isinstance(readout["ingress"]["latencyMs"], int)
    assert readout["admin"]["status"] == "ok" and readout["admin"]["version"] == "1.7.12"
    assert readout["deployments"]["status"] == "ok" and readout["deployments"]["error"] is None
    [primary] = readout["deployments"]["items"]
    assert primary["serviceUrl"] == restate.primary.url
    assert primary["createdAt"].endswith("Z") and len(primary["createdAt"]) == len("2026-05-09T10:00:00.000Z")
    names = {item["name"]: item for item in readout["services"]["items"]}
    assert {WORKFLOW, OBJECT} <= set(names) and isinstance(names[WORKFLOW]["revision"], int)
    assert readout["invocations"]["status"] == "ok"
    assert set(readout["invocations"]) == {"status", "byStatus", "recentFailures", "error"}

    redeployed = op.post("force-redeploy", {"serviceUrl": primary["serviceUrl"], "force": True})
    assert redeployed.status_code == 200, redeployed.content
    assert redeployed.json() == {"acknowledged": True, "deploymentId": redeployed.json()["deploymentId"]}
    deployment_id = redeployed.json()["deploymentId"]
    assert deployment_id.startswith("dp_")

    after = op.post("doctor", {}).json()
    assert after["deployments"]["status"] == "ok"
    assert {"id": deployment_id, "serviceUrl": restate.primary.url} in [
        {"id": d["id"], "serviceUrl": d["serviceUrl"]} for d in after["deployments"]["items"]
    ]
    assert [row.outcome for row in OperationAudit.objects.order_by("started_at", "id")] == ["succeeded"] * 3


def test_force_redeploy_registers_a_new_url_without_draining_or_deleting(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    second = restate.start_service()

    response = op.post("force-redeploy", {"serviceUrl": second.url})  # force defaults to true

    assert response.status_code == 200, response.content
    new_id = response.json()["deploymentId"]
    assert new_id != primary_id
    assert restate.deployment_urls() == {primary_id: restate.primary.url, new_id: second.url}
    assert _only_audit_row(response).arguments == {"serviceUrl": second.url}


def test_force_redeploy_without_force_returns_the_existing_deployment(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    response = op.post("force-redeploy", {"serviceUrl": restate.primary.url, "force": False})
    assert response.status_code == 200, response.content
    assert response.json() == {"acknowledged": True, "deploymentId": primary_id}


def test_force_redeploy_of_a_url_the_engine_cannot_reach_fails_with_a_stable_code(op, restate):
    dead_url = f"http://127.0.0.1:{free_port()}/dead"  # nothing listens there
    body = _error(op.post("force-redeploy", {"serviceUrl": dead_url}), 502, "RESTATE_DEPLOYMENT_REGISTRATION_FAILED")
    assert isinstance(body["data"]["adminStatus"], int)
    assert dead_url not in restate.deployment_urls().values()


# --------------------------------------------------------------------------- cleanup


def test_cleanup_with_two_deployments_keeps_the_matching_one(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    stale_id = restate.register(restate.start_service())

    response = op.post("cleanup-stale-deployments", {"serviceUrl": restate.primary.url, "forceDrain": False})

    assert response.status_code == 200, response.content
    assert response.json() == {"acknowledged": True}
    restate.wait_deployments({primary_id})
    assert stale_id not in restate.deployment_urls()


def test_cleanup_with_three_deployments_keeps_a_newer_one_and_removes_the_other_two(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    keep = restate.start_service()
    keep_id = restate.register(keep)
    other_id = restate.register(restate.start_service())
    assert len({primary_id, keep_id, other_id}) == 3

    response = op.post("cleanup-stale-deployments", {"serviceUrl": keep.url})  # forceDrain defaults to false

    assert response.status_code == 200, response.content
    restate.wait_deployments({keep_id})
    # The kept deployment serves the workflow.
    assert restate.call(WORKFLOW, restate.new_key(), "run", {"mode": "succeed"}).status_code == 200


def test_cleanup_without_force_drain_waits_for_pinned_invocations_to_finish(op, restate):
    stale = restate.start_service()
    stale_id = restate.register(stale)  # newest deployment: new runs are pinned to it
    key = restate.new_key()
    invocation_id = restate.submit(key, "hang")
    assert restate.wait_pinned(invocation_id)["pinned_deployment_id"] == stale_id
    keep = restate.start_service()
    keep_id = restate.register(keep)  # newer again; the hanging run stays pinned to stale

    # Release the run while cleanup drains; whenever it lands, cleanup must not delete before the run is done.
    releaser = threading.Timer(0.5, lambda: restate.call(WORKFLOW, key, "release"))
    releaser.start()
    try:
        response = op.post("cleanup-stale-deployments", {"serviceUrl": keep.url})
    finally:
        releaser.join()

    assert response.status_code == 200, response.content
    row = restate.invocation(invocation_id)
    assert (row["status"], row["completion_result"]) == ("completed", "success")
    assert keep_id in restate.deployment_urls()
    restate.wait_deployments({keep_id})


def test_cleanup_without_force_drain_leaves_a_live_deployment_that_does_not_drain_in_time(op, restate, settings):
    settings.RESTATE_DRAIN_TIMEOUT = 0.5
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    stale_id = restate.register(restate.start_service())
    invocation_id = restate.submit(restate.new_key(), "hang")  # never released
    assert restate.wait_pinned(invocation_id)["pinned_deployment_id"] == stale_id

    response = op.post("cleanup-stale-deployments", {"serviceUrl": restate.primary.url, "forceDrain": False})

    assert response.status_code == 200 and response.json() == {"acknowledged": True}
    assert set(restate.deployment_urls()) == {primary_id, stale_id}
    assert restate.invocation(invocation_id)["status"] not in {"completed", "killed", "cancelled"}


def test_cleanup_without_force_drain_kills_what_is_pinned_to_an_unreachable_deployment(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    stale = restate.start_service()
    stale_id = restate.register(stale)
    invocation_id = restate.submit(restate.new_key(), "hang")
    assert restate.wait_pinned(invocation_id)["pinned_deployment_id"] == stale_id
    stale.kill()

    response = op.post("cleanup-stale-deployments", {"serviceUrl": restate.primary.url, "forceDrain": False})

    assert response.status_code == 200, response.content
    restate.wait_deployments({primary_id})
    row = restate.wait_status(invocation_id, "completed")
    assert row["completion_result"] == "failure"


def test_cleanup_with_force_drain_deletes_despite_pending_invocations(op, restate):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    stale_id = restate.register(restate.start_service())
    invocation_id = restate.submit(restate.new_key(), "hang")
    assert restate.wait_pinned(invocation_id)["pinned_deployment_id"] == stale_id

    response = op.post("cleanup-stale-deployments", {"serviceUrl": restate.primary.url, "forceDrain": True})

    assert response.status_code == 200 and response.json() == {"acknowledged": True}
    restate.wait_deployments({primary_id})
    # Forced: Revive neither waited for nor killed the pending run.
    assert restate.invocation(invocation_id)["status"] not in {"completed", "killed", "cancelled"}


@pytest.mark.parametrize("mismatch", ["{url}x", "{url}/", "{bare}", "http://user:secret@host:9080/v1"])
def test_cleanup_with_a_url_that_matches_no_deployment_is_404_and_deletes_nothing(op, restate, mismatch):
    primary_id = restate.admin.register_deployment(restate.primary.url, force=False).id
    other_id = restate.register(restate.start_service())
    url = mismatch.format(url=restate.primary.url, bare=restate.primary.url.rstrip("/"))

    body = _error(op.post("cleanup-stale-deployments", {"serviceUrl": url}), 404, "RESTATE_DEPLOYMENT_NOT_FOUND")

    assert "secret" not in json.dumps(body)
    assert set(restate.deployment_urls()) == {primary_id, other_id}


# --------------------------------------------------------------------------- recover-stuck-workflow


def test_recover_a_terminal_failed_workflow_then_a_new_submission_starts_blank(op, restate):
    key = restate.new_key("invitation")
    failed_id = restate.submit(key, "fail")
    row = restate.wait_status(failed_id, "completed")
    assert row["completion_result"] == "failure"
    # Stuck: the key cannot run again, and still has its state.
    assert restate.call(WORKFLOW, key, "run", {"mode": "succeed"}).status_code == 409
    assert restate.call(WORKFLOW, key, "attempts").json() == 1

    doctor = op.post("doctor", {}).json()
    failure = next(f for f in doctor["invocations"]["recentFailures"] if f["id"] == failed_id)
    assert failure["serviceName"] == WORKFLOW and failure["serviceKey"] == key
    assert "terminal failure" in failure["errorMessage"] and failure["failedAt"].endswith("Z")

    response = op.post("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": key})

    assert response.status_code == 200, response.content
    assert response.json() == {"acknowledged": True}
    assert restate.invocation(failed_id) is None  # purged
    rerun = restate.call(WORKFLOW, key, "run", {"mode": "succeed"})
    assert rerun.status_code == 200, rerun.text
    assert rerun.json() == {"previousAttempts": None, "attempts": 1}


def test_recover_a_running_workflow_is_blocked_with_its_invocation_id(op, restate):
    key = restate.new_key()
    invocation_id = restate.submit(key, "hang")
    restate.wait_pinned(invocation_id)

    body = _error(
        op.post("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": key}),
        409,
        "RESTATE_WORKFLOW_RETRY_BLOCKED",
    )

    assert body["message"] == "Workflow retry is blocked by an active invocation"
    assert body["data"] == {"reason": "active-invocation", "invocationIds": [invocation_id]}
    assert restate.invocation(invocation_id)["status"] not in {"completed", "killed", "cancelled"}
    assert restate.call(WORKFLOW, key, "attempts").json() == 1  # state untouched


def test_recover_a_succeeded_workflow_is_blocked(op, restate):
    key = restate.new_key()
    invocation_id = restate.submit(key, "succeed")
    restate.wait_status(invocation_id, "completed")

    body = _error(
        op.post("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": key}),
        409,
        "RESTATE_WORKFLOW_RETRY_BLOCKED",
    )

    assert body["data"] == {"reason": "already-succeeded", "invocationIds": [invocation_id]}
    assert restate.invocation(invocation_id)["completion_result"] == "success"
    assert restate.call(WORKFLOW, key, "attempts").json() == 1


def test_recover_ignores_status_queries_on_the_failed_workflow(op, restate):
    """A UI polling a shared handler leaves successful invocations; they are not workflow runs."""
    key = restate.new_key()
    restate.wait_status(restate.submit(key, "fail"), "completed")
    assert restate.call(WORKFLOW, key, "attempts").json() == 1

    response = op.post("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": key})

    assert response.status_code == 200, response.content
    assert restate.call(WORKFLOW, key, "run", {"mode": "succeed"}).json()["previousAttempts"] is None


def test_recover_a_virtual_object_key_clears_its_state(op, restate):
    key = restate.new_key("object")
    failed_id = restate.submit(key, "fail", service=OBJECT, handler="act")
    restate.wait_status(failed_id, "completed")
    assert restate.call(OBJECT, key, "recall").json() == 1

    response = op.post("recover-stuck-workflow", {"serviceName": OBJECT, "serviceKey": key})

    assert response.status_code == 200, response.content
    assert restate.call(OBJECT, key, "act", {"mode": "succeed"}).json() == {"previousAttempts": None, "attempts": 1}


def test_recover_a_key_with_no_invocations_is_acknowledged(op, restate):
    response = op.post("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": restate.new_key()})
    assert response.status_code == 200 and response.json() == {"acknowledged": True}


def test_recover_a_service_restate_does_not_know_is_a_404(op, restate):
    response = op.post("recover-stuck-workflow", {"serviceName": "NoSuchService", "serviceKey": "key_1"})

    body = _error(response, 404, "RESTATE_SERVICE_NOT_FOUND")
    assert body["data"] == {"serviceName": "NoSuchService"}
    row = _only_audit_row(response)
    assert (row.outcome, row.error_code) == ("failed", "RESTATE_SERVICE_NOT_FOUND")


def test_the_audit_row_keeps_the_service_url_exactly_but_its_user_info(op, restate):
    url = "http://Ops:Secret@Restate-Deploy.Example.COM:9080/V1/?"

    response = op.post("cleanup-stale-deployments", {"serviceUrl": url})

    _error(response, 404, "RESTATE_DEPLOYMENT_NOT_FOUND")
    assert _only_audit_row(response).arguments["serviceUrl"] == "http://REDACTED@Restate-Deploy.Example.COM:9080/V1/?"


# --------------------------------------------------------------------------- the engine unreachable


def test_doctor_with_the_admin_api_stopped_reports_unreachable_components(op, settings, dedicated_restate_server):
    settings.RESTATE_ADMIN_URL = dedicated_restate_server.admin_url
    settings.RESTATE_INGRESS_URL = dedicated_restate_server.ingress_url
    settings.RESTATE_PROBE_TIMEOUT = 5.0
    assert op.post("doctor", {}).json()["admin"]["status"] == "ok"
    dedicated_restate_server.stop()

    response = op.post("doctor", {})

    assert response.status_code == 200, response.content
    readout = response.json()
    for component in ("ingress", "admin", "deployments", "services", "invocations"):
        assert readout[component]["status"] == "unreachable", component
        assert readout[component]["error"], component
    assert readout["admin"] == {
        "status": "unreachable",
        "latencyMs": None,
        "version": None,
        "error": readout["admin"]["error"],
    }
    assert readout["deployments"]["items"] == [] and readout["invocations"]["recentFailures"] == []
    assert _only_audit_row(response).outcome == "succeeded"


def test_doctor_answers_in_bounded_time_when_the_engine_hangs(op, settings, hung_endpoint):
    settings.RESTATE_ADMIN_URL = hung_endpoint
    settings.RESTATE_INGRESS_URL = hung_endpoint
    settings.RESTATE_PROBE_TIMEOUT = 0.5

    response = op.post("doctor", {})

    assert response.status_code == 200, response.content
    readout = response.json()
    for component in ("ingress", "admin", "deployments", "services", "invocations"):
        assert readout[component]["status"] == "unreachable", component
        assert "Timeout" in readout[component]["error"] or "did not finish" in readout[component]["error"]


def test_doctor_with_an_unresolvable_admin_url_fails(op, settings):
    settings.RESTATE_ADMIN_URL = "http://restate-admin.invalid:9070"

    body = _error(op.post("doctor", {}), 503, "RESTATE_ADMIN_UNREACHABLE")

    assert "restate-admin.invalid" in body["message"]
    row = OperationAudit.objects.get(request_id=body["requestId"])
    assert (row.outcome, row.error_code) == ("failed", "RESTATE_ADMIN_UNREACHABLE")


@pytest.mark.parametrize("admin_url", ["", "not a url", "ftp://127.0.0.1:9070"])
def test_doctor_with_an_unusable_admin_url_fails(op, settings, admin_url):
    settings.RESTATE_ADMIN_URL = admin_url
    _error(op.post("doctor", {}), 503, "RESTATE_ADMIN_UNREACHABLE")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("force-redeploy", {"serviceUrl": "http://127.0.0.1:9080/"}),
        ("cleanup-stale-deployments", {"serviceUrl": "http://127.0.0.1:9080/"}),
        ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": "key_1"}),
    ],
)
def test_write_routes_with_the_admin_api_down_are_admin_unreachable(op, settings, route, body):
    settings.RESTATE_ADMIN_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _error(op.post(route, body), 503, "RESTATE_ADMIN_UNREACHABLE")
    settings.RESTATE_ADMIN_URL = "http://restate-admin.invalid:9070"
    _error(op.post(route, body), 503, "RESTATE_ADMIN_UNREACHABLE")


# --------------------------------------------------------------------------- validation

URL = "http://ddwf:9080/v1"
BAD_BODIES = [
    ("doctor", {"unexpected": 1}),
    ("doctor", []),
    ("force-redeploy", {}),
    ("force-redeploy", {"serviceUrl": None}),
    ("force-redeploy", {"serviceUrl": ""}),
    ("force-redeploy", {"serviceUrl": 42}),
    ("force-redeploy", {"serviceUrl": "ddwf:9080/v1"}),
    ("force-redeploy", {"serviceUrl": "ftp://ddwf:9080/v1"}),
    ("force-redeploy", {"serviceUrl": "http:///v1"}),
    ("force-redeploy", {"serviceUrl": "http://ddwf:notaport/v1"}),
    ("force-redeploy", {"serviceUrl": " http://ddwf:9080/v1"}),
    ("force-redeploy", {"serviceUrl": "http://dd wf:9080/v1"}),
    ("force-redeploy", {"serviceUrl": "http://ddwf/" + "a" * 2100}),
    ("force-redeploy", {"serviceUrl": URL, "force": "true"}),
    ("force-redeploy", {"serviceUrl": URL, "force": 1}),
    ("force-redeploy", {"serviceUrl": URL, "force": None}),
    ("force-redeploy", {"serviceUrl": URL, "reason": "extra fields are refused"}),
    ("cleanup-stale-deployments", {}),
    ("cleanup-stale-deployments", {"forceDrain": True}),
    ("cleanup-stale-deployments", {"serviceUrl": "not a url"}),
    ("cleanup-stale-deployments", {"serviceUrl": URL, "forceDrain": "false"}),
    ("cleanup-stale-deployments", {"serviceUrl": URL, "forceDrain": 0}),
    ("cleanup-stale-deployments", {"serviceUrl": [URL]}),
    ("recover-stuck-workflow", {}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW}),
    ("recover-stuck-workflow", {"serviceKey": "key_1"}),
    ("recover-stuck-workflow", {"serviceName": "", "serviceKey": "key_1"}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": ""}),
    ("recover-stuck-workflow", {"serviceName": "Recovery Workflow", "serviceKey": "key_1"}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": "key/1"}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": "key'; DROP"}),
    ("recover-stuck-workflow", {"serviceName": "a.b", "serviceKey": "key_1"}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": "clé"}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": 12}),
    ("recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": "k" * 300}),
]


@pytest.mark.parametrize(("route", "body"), BAD_BODIES)
def test_every_invalid_body_is_a_422_validation_error_and_is_audited(op, settings, route, body):
    settings.RESTATE_ADMIN_URL = "http://restate-admin.invalid:9070"  # never reached
    response = op.post(route, body)
    _error(response, 422, "VALIDATION_ERROR")
    row = _only_audit_row(response)
    assert (row.outcome, row.error_code, row.route) == ("failed", "VALIDATION_ERROR", f"{BASE}/{route}")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("raw", ["not json", "{", ""])
def test_a_body_that_is_not_a_json_object_is_refused_with_a_stable_code(op, settings, route, raw):
    settings.RESTATE_ADMIN_URL = "http://restate-admin.invalid:9070"
    response = op.post(route, raw=raw)
    assert 400 <= response.status_code < 500, response.content
    assert response.json()["code"] in {"VALIDATION_ERROR", "BAD_REQUEST"}
    assert _only_audit_row(response).outcome == "failed"


# --------------------------------------------------------------------------- permission


@pytest.mark.parametrize("route", ROUTES)
def test_without_a_valid_key_is_401_and_the_handler_does_not_run(op, restate, route):
    deployments = restate.deployment_urls()
    body = {"serviceUrl": restate.start_service().url} if route == "force-redeploy" else {}
    for key in (None, "rvk_unknown_key"):
        response = op.post(route, body, key=key)
        _error(response, 401, "AUTHENTICATION_REQUIRED")
        row = _only_audit_row(response)
        assert (row.actor, row.outcome, row.error_code) == ("anonymous", "refused", "AUTHENTICATION_REQUIRED")
    assert restate.deployment_urls() == deployments


@pytest.mark.parametrize("route", ROUTES)
def test_a_key_without_system_operate_is_403_and_the_handler_does_not_run(op, restate, route):
    key, raw = services.api_key_create(name=f"worker-{next(_seq)}")
    deployments = restate.deployment_urls()
    body = {"serviceUrl": restate.start_service().url} if route == "force-redeploy" else {}

    response = op.post(route, body, key=raw)

    _error(response, 403, "PERMISSION_DENIED")
    assert restate.deployment_urls() == deployments
    row = _only_audit_row(response)
    assert (row.actor, row.role, row.outcome) == (key.actor, "worker", "refused")


# --------------------------------------------------------------------------- audit and redaction


def test_credentials_in_a_service_url_are_redacted_in_the_audit_row(op, restate, caplog):
    caplog.set_level(logging.DEBUG)
    secret_url = "http://user:secret@host:9080/v1"

    response = op.post(
        "force-redeploy", {"serviceUrl": secret_url, "force": True}, x_operator_reason="INC-42 re-register"
    )

    _error(response, 502, "RESTATE_DEPLOYMENT_REGISTRATION_FAILED")  # the engine cannot resolve "host"
    row = _only_audit_row(response)
    assert row.arguments == {"serviceUrl": "http://REDACTED@host:9080/v1", "force": True}
    assert row.reason == "INC-42 re-register"
    stored = json.dumps([row.arguments, row.error, row.reason])
    assert "secret" not in stored and "user:" not in stored
    assert "secret" not in response.content.decode()
    assert "secret" not in caplog.text


def test_a_real_registration_with_credentials_is_redacted_too(op, restate, caplog):
    caplog.set_level(logging.DEBUG)
    service = restate.start_service()
    secret_url = service.url.replace("http://", "http://user:secret@") + "v1?tenant=a#frag"

    response = op.post("force-redeploy", {"serviceUrl": secret_url})

    assert response.status_code == 200, response.content
    row = _only_audit_row(response)
    assert row.arguments["serviceUrl"] == service.url.replace("http://", "http://REDACTED@") + "v1?tenant=a#frag"
    assert "secret" not in json.dumps(row.arguments) and "secret" not in caplog.text


def test_every_attempt_writes_one_audit_row(op, restate, client):
    worker, worker_raw = services.api_key_create(name=f"worker-{next(_seq)}")
    attempts = [
        (op.post("doctor", {}), "succeeded", ""),
        (op.post("force-redeploy", {"serviceUrl": restate.primary.url}), "succeeded", ""),
        (
            op.post("cleanup-stale-deployments", {"serviceUrl": "http://nowhere:1/"}),
            "failed",
            "RESTATE_DEPLOYMENT_NOT_FOUND",
        ),
        (
            op.post("recover-stuck-workflow", {"serviceName": "bad name", "serviceKey": "k"}),
            "failed",
            "VALIDATION_ERROR",
        ),
        (op.post("doctor", {}, key=None), "refused", "AUTHENTICATION_REQUIRED"),
        (op.post("doctor", {}, key=worker_raw), "refused", "PERMISSION_DENIED"),
    ]
    request_ids = [response.headers["X-Request-Id"] for response, _, _ in attempts]
    assert len(set(request_ids)) == len(attempts)
    assert OperationAudit.objects.count() == len(attempts)
    for response, outcome, code in attempts:
        row = _only_audit_row(response)
        assert (row.outcome, row.error_code) == (outcome, code)
        assert row.started_at <= row.finished_at
        assert row.route.startswith(f"{BASE}/")
        if outcome == "failed":
            assert row.error
    operator_rows = OperationAudit.objects.filter(request_id__in=request_ids[:4])
    assert {(r.role, r.actor.startswith("operator:")) for r in operator_rows} == {("operator+system_operate", True)}


def test_a_supplied_request_id_is_kept(op, restate):
    response = op.post("doctor", {}, x_request_id="incident-2026-0042")
    assert response.headers["X-Request-Id"] == "incident-2026-0042"
    assert _only_audit_row(response).request_id == "incident-2026-0042"


def test_doctor_marks_components_degraded_when_something_else_answers_at_the_admin_url(op, restate, settings):
    settings.RESTATE_ADMIN_URL = restate.ingress_url  # reachable, but not the admin API

    response = op.post("doctor", {})

    assert response.status_code == 200, response.content
    readout = response.json()
    assert readout["ingress"]["status"] == "ok"
    for component in ("admin", "deployments", "services", "invocations"):
        assert readout[component]["status"] == "degraded", (component, readout[component])
        assert "HTTP 4" in readout[component]["error"] or "HTTP 5" in readout[component]["error"]


def test_doctor_lists_at_most_20_recent_failures_most_recently_modified_first(op, restate):
    keys = [restate.new_key("failing") for _ in range(22)]
    for key in keys:  # one after the other, so the modification order is the submission order
        restate.wait_status(restate.submit(key, "fail"), "completed")
    hanging = restate.submit(restate.new_key(), "hang")
    restate.wait_pinned(hanging)

    readout = op.post("doctor", {}).json()["invocations"]

    assert readout["status"] == "ok"
    failures = readout["recentFailures"]
    assert [f["serviceKey"] for f in failures] == list(reversed(keys))[:20]
    assert [f["failedAt"] for f in failures] == sorted((f["failedAt"] for f in failures), reverse=True)
    assert readout["byStatus"]["completed"] >= 22
    assert sum(readout["byStatus"].get(s, 0) for s in ("running", "suspended", "backing-off", "ready")) >= 1
