"""Namespaces: a worker key sees and acts only inside its namespace; another namespace's run, connection or action
answers exactly as one that does not exist, on every route; the same run id in two namespaces is two runs."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from cases import services
from cases.models import Action, ApiKey, Connection, Namespace, RecoveryCase, Run
from cases.namespaces import namespace_ensure, qualify
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db

RUN = "run_7f2"
CONN = "conn_microsoft_ops"


@pytest.fixture
def keys():
    for name in ("alpha", "beta"):
        namespace_ensure(name=name, actor="t")
    return {ns: services.api_key_create(name=f"worker-{ns}", namespace=ns)[1] for ns in ("alpha", "beta")}


@pytest.fixture
def call(client):
    def call(key, method, path, body=None):
        url = f"/api/v1{path}"
        if method == "get":
            return client.get(url, HTTP_X_API_KEY=key)
        return client.post(
            url, data=body if body is not None else {}, content_type="application/json", HTTP_X_API_KEY=key
        )

    return call


def make_world(ns: str, *, connection_id: str = CONN, run_id: str = RUN, executing: str = "send", parked: bool = False):
    """In ``ns``: a connection, a run with a checkpoint, an executing action and, if asked, a parked run with a case."""
    services.connection_create(
        connection_id=qualify(ns, connection_id),
        namespace=ns,
        provider="entra",
        owner_email=f"owner@{ns}.example",
        provider_subject=f"oid-{ns}",
        provider_tenant="tid",
    )
    services.run_register(
        run_id=qualify(ns, run_id),
        namespace=ns,
        runtime="langgraph",
        runtime_ref={"thread_id": ns},
        workflow_name="Nightly executive briefing",
        actor="t",
    )
    services.action_begin(
        run_id=qualify(ns, run_id),
        checkpoint_id="05",
        connection_id=qualify(ns, connection_id),
        action_key=executing,
        generation=1,
        actor="t",
    )
    for key in ("settled", "unsure"):
        services.action_begin(
            run_id=qualify(ns, run_id),
            checkpoint_id="05",
            connection_id=qualify(ns, connection_id),
            action_key=key,
            generation=1,
            actor="t",
        )
    services.action_mark_ambiguous(run_id=qualify(ns, run_id), action_key="unsure", generation=1, reason="t", actor="t")
    if parked:
        services.credential_failure_report(
            run_id=qualify(ns, run_id),
            connection_id=qualify(ns, connection_id),
            generation=1,
            provider_error=DEAD_GRANT,
            actor="t",
        )


def routes():
    """Every worker route but registration, addressed at A's ids, with a body that would act on A's data."""
    return [
        ("post", f"/runs/{RUN}/checkpoints", {"checkpoint_id": "06", "label": "x"}),
        ("get", f"/runs/{RUN}/recovery", None),
        ("post", f"/connections/{CONN}/lease", {}),
        ("post", f"/runs/{RUN}/actions/new_key/begin", {"checkpoint_id": "05", "connection_id": CONN, "generation": 1}),
        ("post", f"/runs/{RUN}/actions/send/begin", {"checkpoint_id": "05", "connection_id": CONN, "generation": 1}),
        ("post", f"/runs/{RUN}/actions/send/commit", {"generation": 1, "result": {"forged": True}}),
        ("post", f"/runs/{RUN}/actions/send/heartbeat", {"generation": 1}),
        ("post", f"/runs/{RUN}/actions/send/fail", {"generation": 1, "error": DEAD_GRANT}),
        ("post", f"/runs/{RUN}/actions/send/ambiguous", {"generation": 1, "reason": "x"}),
        ("post", f"/runs/{RUN}/actions/unsure/reconcile", {"generation": 1, "found": True, "evidence": {"x": 1}}),
        ("post", f"/runs/{RUN}/credential-failures", {"connection_id": CONN, "generation": 1, "error": DEAD_GRANT}),
        ("post", f"/connections/{CONN}/refresh-claims", {"generation": 1, "holder": "worker-b"}),
        (
            "post",
            f"/connections/{CONN}/refresh-claims/release",
            {"generation": 1, "holder": "worker-b", "round": 1, "outcome": "refreshed"},
        ),
    ]


@pytest.mark.parametrize("method, path, body", routes(), ids=[f"{m} {p}" for m, p, _ in routes()])
def test_another_namespaces_data_answers_exactly_as_if_it_did_not_exist(keys, call, method, path, body):
    nothing = call(keys["beta"], method, path, body)
    assert nothing.status_code == 404, nothing.content
    make_world("alpha", parked=True)
    before = {a.action_key: a.state for a in Action.objects.all()}
    events = AuditEvent.objects.count()

    theirs = call(keys["beta"], method, path, body)

    assert (theirs.status_code, theirs.json()) == (nothing.status_code, nothing.json())
    assert {a.action_key: a.state for a in Action.objects.all()} == before  # nothing of alpha's moved
    assert AuditEvent.objects.count() == events  # and nothing was written about it
    mine = call(keys["alpha"], method, path, body)
    assert mine.status_code != 404, mine.content  # the same call in alpha's own namespace reaches its data


def test_the_list_above_is_every_worker_route():
    """A route added to the worker API without a place in ``routes()`` fails here (registration is tested below)."""
    import re

    from revive_site.api import worker_api

    served = {
        (method, path.removeprefix("/api/v1"))
        for path, operations in worker_api.get_openapi_schema(path_prefix="/api/v1")["paths"].items()
        for method in operations
    }
    listed = {
        (
            method,
            re.sub(
                r"/actions/[^/]+",
                "/actions/{action_key}",
                path.replace(RUN, "{run_id}").replace(CONN, "{connection_id}"),
            ),
        )
        for method, path, _ in routes()
    }
    assert served - listed == {("post", "/runs")}
    assert listed <= served


def test_a_key_of_b_with_a_connection_in_b_cannot_reach_as_run(keys, call):
    make_world("alpha", connection_id="conn_a_only")
    make_world("beta", run_id="run_b")
    resp = call(
        keys["beta"],
        "post",
        f"/runs/{RUN}/actions/x/begin",
        {"checkpoint_id": "05", "connection_id": CONN, "generation": 1},
    )
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (404, "RUN_NOT_FOUND", {"run_id": RUN})
    resp = call(
        keys["beta"],
        "post",
        "/runs/run_b/actions/x/begin",
        {"checkpoint_id": "05", "connection_id": "conn_a_only", "generation": 1},
    )
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        404,
        "CONNECTION_NOT_FOUND",
        {"connection_id": "conn_a_only"},
    )


def test_the_same_run_id_in_two_namespaces_is_two_runs(keys, call):
    for ns, runtime, workflow in [("alpha", "langgraph", "Briefing A"), ("beta", "temporal", "Briefing B")]:
        call_command(
            "revive_connection",
            CONN,
            "--provider",
            "oidc",
            "--owner-email",
            f"o@{ns}.example",
            "--subject",
            f"sub-{ns}",
            "--issuer",
            "https://idp.example/",
            "--namespace",
            ns,
        )
        resp = call(keys[ns], "post", "/runs", {"run_id": RUN, "runtime": runtime, "workflow_name": workflow})
        assert resp.status_code == 200 and resp.json()["run_id"] == RUN and resp.json()["runtime"] == runtime
    assert Run.objects.count() == 2 and Connection.objects.count() == 2
    begin = {"checkpoint_id": "05", "connection_id": CONN, "generation": 1}
    a = call(keys["alpha"], "post", f"/runs/{RUN}/actions/send/begin", begin).json()
    b = call(keys["beta"], "post", f"/runs/{RUN}/actions/send/begin", begin).json()
    assert a["decision"] == b["decision"] == "execute" and a["idempotency_key"] != b["idempotency_key"]
    assert (
        call(
            keys["alpha"], "post", f"/runs/{RUN}/actions/send/commit", {"generation": 1, "result": {"by": "a"}}
        ).status_code
        == 200
    )
    parked = call(keys["beta"], "post", f"/runs/{RUN}/actions/send/fail", {"generation": 1, "error": DEAD_GRANT}).json()
    assert parked["outcome"] == "parked"
    status_a = call(keys["alpha"], "get", f"/runs/{RUN}/recovery").json()
    status_b = call(keys["beta"], "get", f"/runs/{RUN}/recovery").json()
    assert (status_a["runtime"], status_a["state"], status_a["cases"]) == ("langgraph", "active", [])
    assert (status_b["runtime"], status_b["state"]) == ("temporal", "parked")
    assert status_b["cases"][0]["connection_id"] == CONN and status_b["actions"][0]["connection_id"] == CONN
    case = RecoveryCase.objects.get()
    assert case.namespace_id == "beta" and case.connection.namespace_id == "beta" and case.run.namespace_id == "beta"
    # alpha's connection is untouched by beta's dead grant
    assert call(keys["alpha"], "post", f"/connections/{CONN}/lease").json() == {
        "connection_id": CONN,
        "generation": 1,
        "usable": True,
        "case_id": None,
    }
    assert call(keys["beta"], "post", f"/connections/{CONN}/lease").json()["usable"] is False


def test_error_bodies_carry_the_ids_the_worker_sent(keys, call):
    make_world("beta")
    services.lease_advance(connection_id=qualify("beta", CONN), from_generation=1, actor="t")
    resp = call(keys["beta"], "post", f"/runs/{RUN}/actions/send/commit", {"generation": 1})
    assert resp.json()["code"] == "LEASE_FENCED" and resp.json()["data"]["connection_id"] == CONN
    assert "~" not in resp.content.decode()


def test_the_commands_create_keys_and_connections_in_a_namespace(capsys):
    call_command("revive_api_key", "fleet-gamma", "--namespace", "gamma")
    assert ApiKey.objects.get(name="fleet-gamma").namespace_id == "gamma"
    assert Namespace.objects.filter(name="gamma").exists()
    assert AuditEvent.objects.filter(action="namespace.created", entity_id="gamma").count() == 1
    call_command(
        "revive_connection",
        "conn_g",
        "--provider",
        "oidc",
        "--owner-email",
        "o@g.example",
        "--subject",
        "s",
        "--issuer",
        "https://idp.example/",
        "--namespace",
        "gamma",
    )
    assert Connection.objects.get(namespace_id="gamma").pk == "gamma~conn_g"
    call_command("revive_api_key", "fleet-default")
    assert ApiKey.objects.get(name="fleet-default").namespace_id == "default"
    with pytest.raises(CommandError, match="Not A Name|namespace"):
        call_command("revive_api_key", "fleet-bad", "--namespace", "Not A Name")
    with pytest.raises(SystemExit):
        call_command(
            "revive_connection", "conn~forged", "--provider", "entra", "--owner-email", "o@g.example", "--subject", "s"
        )
