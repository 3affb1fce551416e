"""The console for operators limited to some namespaces: lists, search, filters, pages and operations."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import services
from cases.models import CaseState, Namespace, RecoveryCase
from cases.namespaces import namespace_ensure, qualify
from console.services import namespace_operators_set
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db

LIST = "/admin/cases/recoverycase/"


def case_in(ns: str, n: int) -> RecoveryCase:
    namespace_ensure(name=ns, actor="t")
    conn, run = qualify(ns, f"conn_{n}"), qualify(ns, f"run_{n}")
    services.connection_create(
        connection_id=conn,
        namespace=ns,
        provider="entra",
        owner_email=f"o{n}@{ns}.example",
        provider_subject=f"oid-{n}",
        provider_tenant=f"tid-{ns}",
    )
    services.run_register(run_id=run, namespace=ns, runtime="langgraph", runtime_ref={}, workflow_name="W", actor="t")
    answer = services.credential_failure_report(
        run_id=run, connection_id=conn, generation=1, provider_error=DEAD_GRANT, actor="t"
    )
    return RecoveryCase.objects.get(reference=answer.case_reference)


def test_an_operator_limited_to_a_namespace_sees_and_acts_only_inside_it(operator_client, operator):
    mine, theirs = case_in("alpha", 1), case_in("beta", 2)
    namespace_operators_set(name="alpha", users=[operator], actor="t")
    page = operator_client.get(LIST).content.decode()
    assert f">{mine.reference}<" in page and f">{theirs.reference}<" not in page
    assert "tid-alpha" in page and "tid-beta" not in page  # the tenant filter lists alpha's tenants only
    found = operator_client.get(LIST, {"q": theirs.reference}).content.decode()
    assert f">{theirs.reference}<" not in found
    assert operator_client.get(f"{LIST}{theirs.pk}/change/").status_code == 302  # "does not exist"
    assert operator_client.post(f"{LIST}{theirs.pk}/operate/abandon/", {"reason": "x"}).status_code == 404
    assert RecoveryCase.objects.get(pk=theirs.pk).state != CaseState.ABANDONED
    for url in ["/admin/cases/run/", "/admin/cases/connection/", "/admin/reauth/reconnectrequest/"]:
        listing = operator_client.get(url).content.decode()
        assert "beta~" not in listing and "conn_2" not in listing, url
    assert operator_client.get(f"{LIST}{mine.pk}/change/").status_code == 200
    log = operator_client.get("/admin/audit/auditevent/").content.decode()
    assert mine.reference in log and theirs.reference not in log
    index = operator_client.get("/admin/", {"case": theirs.reference}).content.decode()
    # the dashboard counts and draws alpha's cases only, whichever case is asked for
    assert f"Recovery timeline of {mine.reference}" in index and f"Recovery timeline of {theirs.reference}" not in index
    assert f"/admin/cases/recoverycase/{theirs.pk}/change/" not in index
    other_event = AuditEvent.objects.filter(case_id=theirs.pk).first()
    assert operator_client.get(f"/admin/audit/auditevent/{other_event.pk}/change/").status_code == 302


def test_superusers_and_unlimited_operators_see_every_namespace(admin_client, operator_client):
    a, b = case_in("alpha", 3), case_in("beta", 4)
    for client in (admin_client, operator_client):
        page = client.get(LIST).content.decode()
        assert f">{a.reference}<" in page and f">{b.reference}<" in page


def test_limiting_an_operator_is_audited(admin_client, operator):
    namespace_ensure(name="alpha", actor="t")
    resp = admin_client.post(
        "/admin/cases/namespace/alpha/change/", {"description": "Team A", "operators": [operator.pk]}
    )
    assert resp.status_code == 302, resp.content.decode()[:2000]
    assert list(Namespace.objects.get(pk="alpha").operators.all()) == [operator]
    event = AuditEvent.objects.get(action="namespace.operators_changed")
    assert (event.before, event.after) == ({"operators": []}, {"operators": [operator.username]})


def test_team_tools_stay_inside_the_operators_namespaces(operator_client, operator):
    mine, theirs = case_in("alpha", 5), case_in("beta", 6)
    namespace_operators_set(name="alpha", users=[operator], actor="t")
    assert operator_client.post(f"{LIST}{theirs.pk}/assign/", {"take": "1"}).status_code == 404
    assert operator_client.post(f"{LIST}{theirs.pk}/note/", {"body": "hi"}).status_code == 404
    assert operator_client.get(f"{LIST}{theirs.pk}/audit.csv").status_code == 404
    assert RecoveryCase.objects.get(pk=theirs.pk).assignee is None and not theirs.notes.exists()
    listing = b"".join(operator_client.get(f"{LIST}export.csv").streaming_content).decode()
    assert mine.reference in listing and theirs.reference not in listing
    assert operator_client.post(f"{LIST}{mine.pk}/assign/", {"take": "1"}).status_code == 302
