"""/metrics: off without a token, bearer-protected with one, and every documented metric in it."""

from __future__ import annotations

import re
import secrets
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cases import services
from reauth import services as reauth_services
from reauth.custody import Grant
from reauth.identity import ProviderIdentity
from tests.reauth.conftest import ADA_OID, CONTOSO_TID, MALLORY_OID, issue_link, owner_case  # noqa: F401

TOKEN = "metrics-" + secrets.token_urlsafe(16)
DOCUMENTED = [
    "revive_protected_actions_total",
    "revive_action_call_seconds",
    "revive_cases",
    "revive_cases_opened_total",
    "revive_case_oldest_open_age_seconds",
    "revive_reconnect_outcomes_total",
    "revive_resumes_total",
    "revive_celery_task_failures_total",
]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def scrape(client, settings):
    settings.REVIVE_METRICS_TOKEN = TOKEN

    def get() -> str:
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain; version=")
        return response.content.decode()

    return get


@pytest.mark.django_db
def test_metrics_are_off_without_a_token_and_refused_without_the_right_one(client, settings):
    settings.REVIVE_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    settings.REVIVE_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 401
    refused = client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401


@pytest.mark.django_db
def test_protected_actions_are_counted_by_decision_and_timed(scrape, api, make_connection, make_run):
    conn, run = make_connection(), make_run()
    before = scrape()
    begin = {"checkpoint_id": "05", "connection_id": conn.pk, "generation": 1}
    assert api.post(f"/runs/{run.pk}/actions/a1/begin", begin).json()["decision"] == "execute"
    assert api.post(f"/runs/{run.pk}/actions/a1/commit", {"generation": 1, "result": {"ok": 1}}).status_code == 200
    assert api.post(f"/runs/{run.pk}/actions/a1/begin", begin).json()["decision"] == "replay"
    after = scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("revive_protected_actions_total", decision="execute") == 1
    assert delta("revive_protected_actions_total", decision="replay") == 1
    assert delta("revive_action_call_seconds_count", call="begin") >= 2
    assert delta("revive_action_call_seconds_count", call="commit") == 1
    for name in DOCUMENTED:
        assert re.search(rf"^# HELP {re.escape(name)} ", after, re.M), name


@pytest.mark.django_db
def test_cases_and_reconnect_outcomes_are_read_from_the_database(scrape, owner_case, issue_link):  # noqa: F811
    empty = scrape()
    assert value(empty, "revive_case_oldest_open_age_seconds") == 0

    refused_case, matched_case = owner_case(), owner_case()
    issue_link(refused_case), issue_link(matched_case)
    wrong = ProviderIdentity(subject=MALLORY_OID, tenant=CONTOSO_TID)
    right = ProviderIdentity(subject=ADA_OID, tenant=CONTOSO_TID)
    completion = reauth_services.reconnect_request_complete(
        public_id=refused_case.request.public_id,
        presented=wrong,
        grant=Grant(access_token="at-1"),
        actor="owner:mallory",
    )
    assert not completion.consumed
    completion = reauth_services.reconnect_request_complete(
        public_id=matched_case.request.public_id, presented=right, grant=Grant(access_token="at-2"), actor="owner:ada"
    )
    assert completion.consumed
    text = scrape()

    assert value(text, "revive_cases_opened_total", failure_class="dead_grant") == 2
    assert (
        value(text, "revive_cases", state="awaiting_owner", failure_class="dead_grant")
        + value(text, "revive_cases", state="opened", failure_class="dead_grant")
        == 1
    )
    assert value(text, "revive_case_oldest_open_age_seconds") > 0
    assert value(text, "revive_reconnect_outcomes_total", outcome="matched") == 1
    assert value(text, "revive_reconnect_outcomes_total", outcome="refused") == 1
    assert value(text, "revive_reconnect_outcomes_total", outcome="locked") == 0


def test_counts_are_summed_over_processes(served, tmp_path, api_key_raw):
    """Two web processes counting in their own memory, one PROMETHEUS_MULTIPROC_DIR: /metrics reports the sum.

    (Two gunicorn instances rather than one with two workers, so that both certainly serve requests: the kernel
    may hand every connection to one worker.)
    """
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    servers = [
        served(collect=False, PROMETHEUS_MULTIPROC_DIR=str(multiproc), REVIVE_METRICS_TOKEN=TOKEN) for _ in range(2)
    ]
    conn = services.connection_create(
        connection_id="conn_metrics_mp",
        provider="entra",
        owner_email="o@example.com",
        provider_subject="s",
        provider_tenant="t",
    )
    headers = {"X-Api-Key": api_key_raw}
    n, threads = 40, 4

    def drive(k: int) -> None:
        with httpx.Client(base_url=servers[k % 2].url, headers=headers, timeout=60) as http:
            for i in range(k, n, threads):
                run = f"run_mp_{i}"
                http.post(
                    "/api/v1/runs",
                    json={
                        "run_id": run,
                        "runtime": "langgraph",
                        "runtime_ref": {"thread_id": run},
                        "workflow_name": "wf",
                    },
                ).raise_for_status()
                answer = http.post(
                    f"/api/v1/runs/{run}/actions/a/begin",
                    json={"checkpoint_id": "01", "connection_id": conn.pk, "generation": 1},
                )
                assert answer.json()["decision"] == "execute"
                http.post(f"/api/v1/runs/{run}/actions/a/commit", json={"generation": 1}).raise_for_status()

    workers = [threading.Thread(target=drive, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    pids = {p.stem.split("_")[-1] for p in multiproc.glob("counter_*.db")}
    texts = [
        httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
        for server in servers
    ]

    assert len(pids) == 2, f"both processes counted: {sorted(p.name for p in multiproc.iterdir())}"
    for text in texts:  # either process answers with the sum
        assert value(text, "revive_protected_actions_total", decision="execute") == n
        assert value(text, "revive_action_call_seconds_count", call="commit") == n


@pytest.fixture
def api_key_raw(transactional_db):
    _, raw = services.api_key_create(name="metrics-mp")
    return raw


def test_a_failing_celery_task_is_counted_by_name():
    from prometheus_client import REGISTRY

    from tests.operable.tasks import fails

    def failures() -> float:
        return REGISTRY.get_sample_value("revive_celery_task_failures_total", {"task": "tests.operable.fails"}) or 0.0

    before = failures()
    result = fails.apply(throw=False)  # traced as a worker traces it: the failure is recorded, not raised
    assert result.failed()
    assert failures() == before + 1


@pytest.mark.django_db
def test_outbox_backlog_and_resume_deliveries_are_read_from_the_outbox(scrape):
    from datetime import timedelta

    from django.apps import apps
    from django.utils import timezone

    try:
        outbox = apps.get_model("cases", "OutboxItem")
    except LookupError:
        pytest.skip("the outbox model (issue 10) is not in this schema yet")
    now = timezone.now()
    for n, (kind, state, age) in enumerate(
        [
            ("run.resume", "done", 0),
            ("run.resume", "done", 0),
            ("run.resume", "failed", 0),
            ("run.resume", "pending", 120),
            ("reauth.notify_owner", "pending", 30),
        ]
    ):
        row = outbox.objects.create(kind=kind, key=f"metrics-{n}", state=state, due_at=now)
        outbox.objects.filter(pk=row.pk).update(created_at=now - timedelta(seconds=age))
    text = scrape()

    assert value(text, "revive_outbox_done_total", kind="run.resume") == 2  # resumes delivered
    assert value(text, "revive_outbox_failed", kind="run.resume") == 1  # resumes failed
    assert value(text, "revive_outbox_backlog", kind="run.resume") == 1
    assert value(text, "revive_outbox_backlog", kind="reauth.notify_owner") == 1
    assert value(text, "revive_outbox_oldest_pending_age_seconds") >= 120
