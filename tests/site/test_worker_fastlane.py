"""begin and commit served without the resolver and ninja's dispatch answer exactly what the ordinary route answers.

Every request is sent twice, on the same world in two namespaces: once through the WSGI application gunicorn serves
(``revive_site.wsgi.application``: the fast lane for begin and commit) and once through the same handler with the
fast lane bypassed (the resolver and ninja). Status, JSON body and headers must agree -- the request id and, where
it is derived from the namespace-qualified run id, the idempotency key aside.
"""

from __future__ import annotations

import json

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory

from bench.profile_request import wsgi_request
from cases import services
from cases.namespaces import namespace_ensure, qualify
from revive_site import worker_fastlane
from revive_site.wsgi import WorkerApiHandler, application

pytestmark = pytest.mark.django_db(transaction=True)

RUN, CONN = "run_fast", "conn_fast"
LANES = ("fast", "ordinary")


class OrdinaryHandler(WorkerApiHandler):
    """The worker API's handler with the fast lane bypassed: every request through the resolver and ninja."""

    def _get_response(self, request):
        return WSGIHandler._get_response(self, request)


@pytest.fixture
def world():
    """The same connection and run in namespace ``fast`` and in namespace ``ordinary``; a worker key for each."""
    keys = {}
    for ns in LANES:
        namespace_ensure(name=ns, actor="t")
        services.connection_create(
            connection_id=qualify(ns, CONN),
            namespace=ns,
            provider="entra",
            owner_email=f"owner@{ns}.example",
            provider_subject="oid",
        )
        services.run_register(
            run_id=qualify(ns, RUN), namespace=ns, runtime="langgraph", runtime_ref={}, workflow_name="w", actor="t"
        )
        keys[ns] = services.api_key_create(name=f"worker-{ns}", namespace=ns)[1]
    return keys


def both(world, method: str, path: str, body=None, raw: bytes | None = None, key: dict | None = None, **headers):
    """The answer of each lane, normalised for comparison: (status, body, headers)."""
    apps = {"fast": application, "ordinary": OrdinaryHandler()}
    out = {}
    for lane in LANES:
        sent_key = (key or world)[lane] if key is not False else None
        status, response_headers, content = wsgi_request(
            apps[lane], method, path, body=body, raw=raw, key=sent_key, headers=headers
        )
        response_headers = {k: v for k, v in response_headers if k not in ("X-Request-Id",)}
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = content
        if isinstance(parsed, dict) and "idempotency_key" in parsed:
            parsed["idempotency_key"] = parsed["idempotency_key"] == services.idempotency_key_for(
                run_id=qualify(lane, RUN), action_key=path.split("/")[-2]
            )
        out[lane] = (status, parsed, response_headers)
    return out


BEGIN = f"/api/v1/runs/{RUN}/actions/send/begin"
COMMIT = f"/api/v1/runs/{RUN}/actions/send/commit"
BEGIN_BODY = {"checkpoint_id": "01", "connection_id": CONN, "generation": 1}


def assert_same(answers, status: int, code: str | None = None):
    assert answers["fast"] == answers["ordinary"]
    got_status, body, headers = answers["fast"]
    assert got_status == status, answers["fast"]
    if code:
        assert body["code"] == code
    return body


def test_a_protected_action_answers_the_same_on_both_lanes(world):
    begun = assert_same(both(world, "POST", BEGIN, BEGIN_BODY), 200)
    assert (begun["decision"], begun["idempotency_key"], begun["lock_seconds"] > 0) == ("execute", True, True)
    committed = assert_same(
        both(world, "POST", COMMIT, {"generation": 1, "result": {"id": 7}, "external_ref": "m"}), 200
    )
    assert (committed["state"], committed["run_id"], committed["result"]) == ("committed", RUN, {"id": 7})
    # What the locked path answers, through the fast lane too: a replay, a repeated commit, an unknown generation.
    replay = assert_same(both(world, "POST", BEGIN, BEGIN_BODY), 200)
    assert (replay["decision"], replay["result"]) == ("replay", {"id": 7})
    assert_same(both(world, "POST", COMMIT, {"generation": 1, "result": {"id": 7}}), 200)
    assert_same(
        both(world, "POST", "/api/v1/runs/run_fast/actions/other/begin", {**BEGIN_BODY, "generation": 5}),
        409,
        "GENERATION_UNKNOWN",
    )


def test_domain_errors_answer_the_same_with_the_ids_the_worker_sent(world):
    body = assert_same(both(world, "POST", "/api/v1/runs/run_fast/actions/never/commit", {"generation": 1}), 404)
    assert "~" not in json.dumps(body)
    assert_same(both(world, "POST", "/api/v1/runs/run_nope/actions/send/begin", BEGIN_BODY), 404)
    assert_same(both(world, "POST", BEGIN, {**BEGIN_BODY, "connection_id": "conn_nope"}), 404)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, "VALIDATION_ERROR"),
        (json.dumps({**BEGIN_BODY, "generation": "1"}).encode(), 422, "VALIDATION_ERROR"),
        (json.dumps({**BEGIN_BODY, "connection_id": "bad id"}).encode(), 422, "VALIDATION_ERROR"),
        (json.dumps({**BEGIN_BODY, "checkpoint_id": "a\u0000b"}).encode(), 422, "VALIDATION_ERROR"),
        (json.dumps({"checkpoint_id": "01"}).encode(), 422, "VALIDATION_ERROR"),
    ],
)
def test_a_body_the_route_refuses_is_refused_the_same_way(world, raw, status, code):
    assert_same(both(world, "POST", BEGIN, raw=raw), status, code)


def test_keys_lengths_paths_and_methods_are_answered_by_the_ordinary_route(world, settings):
    assert_same(both(world, "POST", BEGIN, BEGIN_BODY, key=False), 401, "AUTHENTICATION_REQUIRED")
    assert_same(both(world, "POST", BEGIN, BEGIN_BODY, key={"fast": "rk_nope", "ordinary": "rk_nope"}), 401)
    big = json.dumps({**BEGIN_BODY, "params": {"x": "y" * (settings.REVIVE_MAX_BODY_BYTES + 10)}}).encode()
    assert_same(both(world, "POST", BEGIN, raw=big), 413, "PAYLOAD_TOO_LARGE")
    assert_same(both(world, "GET", BEGIN), 405, "METHOD_NOT_ALLOWED")
    assert_same(both(world, "POST", "/api/v1/runs/run_fast/actions/send/bogus", {}), 404, "NOT_FOUND")


def test_the_fast_lane_takes_only_the_plain_case(world):
    """It answers a well-formed begin or commit with a live key; anything else it leaves to the resolver and ninja."""
    factory = RequestFactory()

    def post(path, body, key=world["fast"], **extra):
        data = body if isinstance(body, bytes) else json.dumps(body)
        return factory.post(path, data=data, content_type="application/json", HTTP_X_API_KEY=key, **extra)

    assert worker_fastlane.answer(post(BEGIN, BEGIN_BODY)).status_code == 200
    assert worker_fastlane.answer(post(COMMIT, {"generation": 1})).status_code == 200
    for request in (
        post(BEGIN, BEGIN_BODY, key="rk_nope"),
        post(BEGIN, b"{"),
        post(BEGIN, [1]),
        post(BEGIN, {**BEGIN_BODY, "generation": 0}),
        post("/api/v1/runs/run_fast/actions/send/heartbeat", {"generation": 1}),
        post("/api/v1/runs/run fast/actions/send/begin", BEGIN_BODY),
        factory.get(BEGIN, HTTP_X_API_KEY=world["fast"]),
    ):
        assert worker_fastlane.answer(request) is None, request
