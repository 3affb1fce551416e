"""The worker API: every endpoint, its happy path, and every kind of bad input as a 4xx with a stable code."""

import json

import pytest

from cases import services
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db

RUN = "run_7f2"
CONN = "conn_microsoft_ops"


@pytest.fixture
def world(make_connection, make_run):
    make_connection(CONN)
    make_run(RUN)


def endpoints():
    """(method, path, a valid body) for every endpoint."""
    return [
        ("post", "/runs", {"run_id": "run_new", "runtime": "langgraph", "workflow_name": "Nightly executive briefing"}),
        ("post", f"/runs/{RUN}/checkpoints", {"checkpoint_id": "05", "label": "05 / prepare brief"}),
        ("get", f"/runs/{RUN}/recovery", None),
        ("post", f"/connections/{CONN}/lease", {}),
        (
            "post",
            f"/runs/{RUN}/actions/send_exec_05/begin",
            {"checkpoint_id": "05", "connection_id": CONN, "generation": 1},
        ),
        ("post", f"/runs/{RUN}/actions/send_exec_05/commit", {"generation": 1, "result": {"id": "m1"}}),
        ("post", f"/runs/{RUN}/actions/send_exec_05/fail", {"generation": 1, "error": {"status": 503}}),
        ("post", f"/runs/{RUN}/actions/send_exec_05/ambiguous", {"generation": 1, "reason": "timeout"}),
        ("post", f"/runs/{RUN}/actions/send_exec_05/reconcile", {"generation": 1, "found": False, "evidence": {}}),
        ("post", f"/runs/{RUN}/credential-failures", {"connection_id": CONN, "generation": 1, "error": DEAD_GRANT}),
    ]


def call(api, method, path, body, **kw):
    return api.get(path, **kw) if method == "get" else api.post(path, body, **kw)


def assert_error(resp, status, code):
    assert resp.status_code == status, resp.content
    body = resp.json()
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == code, body
    assert body["message"]


@pytest.mark.parametrize("method, path, body", endpoints())
@pytest.mark.parametrize("key", [None, "", "rvk_wrong_key", "x" * 500])
def test_missing_or_wrong_key_is_401(api, world, method, path, body, key):
    assert_error(call(api, method, path, body, key=key), 401, "AUTHENTICATION_REQUIRED")


def test_revoked_key_is_401(api, world):
    from cases.models import ApiKey

    services.api_key_revoke(key_id=ApiKey.objects.get().pk, actor="t")
    assert_error(api.post(f"/connections/{CONN}/lease"), 401, "AUTHENTICATION_REQUIRED")


@pytest.mark.parametrize("method, path, body", [e for e in endpoints() if e[2]])
def test_missing_fields_are_422(api, world, method, path, body):
    for field in body:
        partial = {k: v for k, v in body.items() if k != field}
        if field in ("label", "result", "external_ref"):
            continue  # optional
        assert_error(call(api, method, path, partial), 422, "VALIDATION_ERROR")


WRONG_TYPES = {
    "run_id": 12,
    "runtime": "cron",
    "workflow_name": "",
    "checkpoint_id": "has spaces",
    "connection_id": ["x"],
    "generation": "one",
    "found": "maybe",
    "evidence": "text",
    "error": "boom",
    "reason": "",
    "label": 5,
}


@pytest.mark.parametrize("method, path, body", [e for e in endpoints() if e[2]])
def test_wrong_types_are_422(api, world, method, path, body):
    for field in body:
        if field in WRONG_TYPES:
            bad = dict(body, **{field: WRONG_TYPES[field]})
            assert_error(call(api, method, path, bad), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("generation", [0, -1, 2**40])
def test_out_of_range_generation_is_422(api, world, generation):
    body = {"checkpoint_id": "05", "connection_id": CONN, "generation": generation}
    assert_error(api.post(f"/runs/{RUN}/actions/a/begin", body), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("method, path, body", [e for e in endpoints() if e[2]])
def test_malformed_json_is_a_4xx(api, client, world, method, path, body):
    resp = client.post(f"/api/v1{path}", data="{not json", content_type="application/json", HTTP_X_API_KEY=api.key)
    assert resp.status_code in (400, 422)
    assert resp.json()["code"] in ("BAD_REQUEST", "VALIDATION_ERROR")


@pytest.mark.parametrize("method, path, body", [e for e in endpoints() if e[0] == "post"])
def test_oversized_body_is_413(api, client, world, settings, method, path, body):
    huge = json.dumps(dict(body or {}, padding="x" * (settings.REVIVE_MAX_BODY_BYTES + 10)))
    resp = client.post(f"/api/v1{path}", data=huge, content_type="application/json", HTTP_X_API_KEY=api.key)
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "method, path, body, code",
    [
        ("post", "/runs/nope/checkpoints", {"checkpoint_id": "05"}, "RUN_NOT_FOUND"),
        ("get", "/runs/nope/recovery", None, "RUN_NOT_FOUND"),
        ("post", "/connections/nope/lease", {}, "CONNECTION_NOT_FOUND"),
        (
            "post",
            "/runs/nope/actions/a/begin",
            {"checkpoint_id": "05", "connection_id": CONN, "generation": 1},
            "RUN_NOT_FOUND",
        ),
        (
            "post",
            f"/runs/{RUN}/actions/a/begin",
            {"checkpoint_id": "05", "connection_id": "nope", "generation": 1},
            "CONNECTION_NOT_FOUND",
        ),
        ("post", f"/runs/{RUN}/actions/never/commit", {"generation": 1}, "ACTION_NOT_FOUND"),
        ("post", "/runs/nope/actions/never/commit", {"generation": 1}, "RUN_NOT_FOUND"),
        ("post", f"/runs/{RUN}/actions/never/fail", {"generation": 1, "error": {"status": 500}}, "ACTION_NOT_FOUND"),
        ("post", f"/runs/{RUN}/actions/never/ambiguous", {"generation": 1, "reason": "x"}, "ACTION_NOT_FOUND"),
        (
            "post",
            f"/runs/{RUN}/actions/never/reconcile",
            {"generation": 1, "found": True, "evidence": {}},
            "ACTION_NOT_FOUND",
        ),
        (
            "post",
            "/runs/nope/credential-failures",
            {"connection_id": CONN, "generation": 1, "error": DEAD_GRANT},
            "RUN_NOT_FOUND",
        ),
        (
            "post",
            f"/runs/{RUN}/credential-failures",
            {"connection_id": "nope", "generation": 1, "error": DEAD_GRANT},
            "CONNECTION_NOT_FOUND",
        ),
    ],
)
def test_unknown_ids_are_404(api, world, method, path, body, code):
    assert_error(call(api, method, path, body), 404, code)


def test_unknown_route_and_wrong_method_are_4xx(api, world, client):
    resp = client.get("/api/v1/nothing-here", HTTP_X_API_KEY=api.key)
    assert resp.status_code == 404
    resp = client.get(f"/api/v1/runs/{RUN}/actions/a/begin", HTTP_X_API_KEY=api.key)
    assert resp.status_code == 405


def test_conflicts_are_409(api, world):
    assert_error(
        api.post("/runs", {"run_id": RUN, "runtime": "temporal", "workflow_name": "Nightly executive briefing"}),
        409,
        "RUN_CONFLICT",
    )
    begin = {"checkpoint_id": "05", "connection_id": CONN, "generation": 1, "params": {"to": "a"}}
    assert api.post(f"/runs/{RUN}/actions/send/begin", begin).json()["decision"] == "execute"
    assert_error(api.post(f"/runs/{RUN}/actions/send/begin", begin), 409, "ACTION_IN_PROGRESS")
    assert_error(
        api.post(f"/runs/{RUN}/actions/send/begin", dict(begin, params={"to": "b"})), 409, "ACTION_PARAMS_MISMATCH"
    )
    assert_error(api.post(f"/runs/{RUN}/actions/send/begin", dict(begin, generation=9)), 409, "GENERATION_UNKNOWN")
    assert_error(
        api.post(f"/runs/{RUN}/actions/send/reconcile", {"generation": 1, "found": True, "evidence": {}}),
        409,
        "ACTION_TRANSITION_NOT_ALLOWED",
    )
    services.lease_advance(connection_id=CONN, from_generation=1, actor="t")
    assert_error(api.post(f"/runs/{RUN}/actions/send/commit", {"generation": 1}), 409, "LEASE_FENCED")


def test_the_whole_contract_over_http(api, world):
    begin = {"checkpoint_id": "05", "connection_id": CONN, "generation": 1}
    assert (
        api.post(f"/runs/{RUN}/checkpoints", {"checkpoint_id": "05", "label": "05 / prepare brief"}).json()["label"]
        == "05 / prepare brief"
    )
    lease = api.post(f"/connections/{CONN}/lease").json()
    assert lease == {"connection_id": CONN, "generation": 1, "usable": True, "case_id": None}
    first = api.post(f"/runs/{RUN}/actions/send_exec_05/begin", begin).json()
    assert first["decision"] == "execute" and first["idempotency_key"].startswith("rv1_")
    failed = api.post(f"/runs/{RUN}/actions/send_exec_05/fail", {"generation": 1, "error": DEAD_GRANT}).json()
    assert (
        failed["outcome"] == "parked" and failed["failure_class"] == "dead_grant" and failed["code"] == "AADSTS700082"
    )
    assert api.post(f"/runs/{RUN}/actions/send_exec_05/begin", begin).json()["decision"] == "parked"
    status = api.get(f"/runs/{RUN}/recovery").json()
    assert status["state"] == "parked"
    assert status["cases"][0]["case_id"] == failed["case_id"] and status["cases"][0]["blocking"] is True
    assert api.post(f"/connections/{CONN}/lease").json()["usable"] is False
    services.case_reauthorize(case_id=failed["case_id"], actor="owner")
    services.case_resume_begin(case_id=failed["case_id"], actor="system")
    assert api.post(f"/runs/{RUN}/actions/send_exec_05/begin", begin).json()["decision"] == "fenced"
    again = api.post(f"/runs/{RUN}/actions/send_exec_05/begin", dict(begin, generation=2)).json()
    assert again["decision"] == "execute" and again["idempotency_key"] == first["idempotency_key"]
    committed = api.post(
        f"/runs/{RUN}/actions/send_exec_05/commit", {"generation": 2, "result": {"id": "m1"}, "external_ref": "m1"}
    ).json()
    assert committed["state"] == "committed"
    replay = api.post(f"/runs/{RUN}/actions/send_exec_05/begin", dict(begin, generation=2)).json()
    assert (replay["decision"], replay["result"], replay["external_ref"]) == ("replay", {"id": "m1"}, "m1")
    assert api.get(f"/runs/{RUN}/recovery").json()["cases"][0]["state"] == "resumed"


def test_no_credential_crosses_the_worker_api(api, world):
    error = dict(
        DEAD_GRANT,
        body=dict(DEAD_GRANT["body"], refresh_token="rt-SECRET-123"),
        headers={"Authorization": "Bearer AT-SECRET-456"},
    )
    api.post(f"/runs/{RUN}/actions/send/begin", {"checkpoint_id": "05", "connection_id": CONN, "generation": 1})
    out = api.post(f"/runs/{RUN}/actions/send/fail", {"generation": 1, "error": error}).content
    out += api.get(f"/runs/{RUN}/recovery").content
    assert b"SECRET" not in out


def test_openapi_docs_are_served(client):
    assert client.get("/api/v1/docs").status_code == 200
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/runs/{run_id}/actions/{action_key}/begin" in schema["paths"]
