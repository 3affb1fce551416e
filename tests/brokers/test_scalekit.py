"""Scalekit connected accounts: Revive polls their status (bounded, with backoff); a non-ACTIVE status opens the case
like a dead grant; the owner gets a fresh magic link; ACTIVE again plus the identity proof advances the generation.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from audit.models import AuditEvent
from cases.models import CaseState, Connection, CredentialGeneration, RecoveryCase
from reauth.brokers import services as broker_services
from reauth.models import BrokerSignal, ReconnectRequest
from tests.reauth.conftest import tables_containing

pytestmark = pytest.mark.django_db(transaction=True)
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_BROKER_LINK = re.compile(r'id="broker-link" href="([^"]+)"')


def expire(standin, conn, status="EXPIRED"):
    with standin._lock:
        standin.accounts[(conn.broker_integration, conn.broker_connection)]["status"] = status


@pytest.mark.parametrize("status", ["EXPIRED", "PENDING_AUTH", "DISCONNECTED", "REVOKED", "ERROR"])
def test_a_non_active_account_opens_the_case_once(
    scalekit_settings, scalekit_connection, scalekit_standin, status, mailoutbox
):
    conn = scalekit_connection()
    assert conn.pk in broker_services.scalekit_accounts_poll().checked
    assert not RecoveryCase.objects.filter(connection=conn).exists()
    expire(scalekit_standin, conn, status)
    assert broker_services.scalekit_accounts_poll().changed == [conn.pk]
    case = RecoveryCase.objects.get(connection=conn)
    assert (case.failure_class, case.rejected_generation, case.run_id) == ("dead_grant", 1, None)
    assert CredentialGeneration.objects.get(connection=conn, number=1).state == CredentialGeneration.State.REJECTED
    assert len(mailoutbox) == 1
    assert broker_services.scalekit_accounts_poll().changed == []  # the same status again is no new signal
    assert RecoveryCase.objects.filter(connection=conn).count() == 1
    assert BrokerSignal.objects.filter(connection=conn).count() == 2  # ACTIVE, then the change


def test_the_poll_is_bounded_and_backs_off_from_an_account_it_cannot_read(
    scalekit_settings, scalekit_connection, scalekit_standin
):
    conns = [scalekit_connection() for _ in range(3)]
    assert len(broker_services.scalekit_accounts_poll(limit=2).checked) == 2
    broken = conns[0]
    with scalekit_standin._lock:
        scalekit_standin.accounts.pop((broken.broker_integration, broken.broker_connection))
    first = broker_services.scalekit_accounts_poll()
    assert any(e.startswith(broken.pk) for e in first.errors)
    second = broker_services.scalekit_accounts_poll()
    assert broken.pk not in second.checked and not any(e.startswith(broken.pk) for e in second.errors)
    assert {c.pk for c in conns[1:]} <= set(second.checked)


def _expired_case(scalekit_connection, scalekit_standin, revive_server, mailoutbox, settings):
    """A Scalekit account the poll has seen ACTIVE, then EXPIRED: case open, link e-mailed."""
    from tests.reauth.conftest import link_in

    settings.PUBLIC_BASE_URL = revive_server.url
    conn = scalekit_connection()
    broker_services.scalekit_accounts_poll()
    expire(scalekit_standin, conn)
    broker_services.scalekit_accounts_poll()
    return (conn, *link_in(mailoutbox[-1]))


def _owner_reconnects(link: str, idp_browser, username: str, poll) -> str:
    owner = httpx.Client(timeout=30, follow_redirects=False)
    landing = owner.get(link)
    page = owner.get(str(landing.url.join(landing.headers["location"])))
    started = owner.post(
        str(page.url).rstrip("/") + "/start",
        data={"csrfmiddlewaretoken": _CSRF.search(page.text).group(1)},
        headers={"Referer": str(page.url)},
    )
    waiting = str(started.url.join(started.headers["location"]))
    magic = _BROKER_LINK.search(owner.get(waiting).text).group(1)
    assert "/magic/" in magic
    callback = idp_browser.authorize(magic, username)
    assert idp_browser.http.get(callback).status_code == 200  # Scalekit stores the grant; the account is ACTIVE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        poll()
        answer = owner.get(waiting)
        if answer.is_redirect:
            return answer.headers["location"]
        time.sleep(0.2)
    pytest.fail("Revive never settled the Scalekit reconnect")


def test_active_again_with_the_right_identity_advances_the_generation_and_stores_no_token(
    scalekit_settings, scalekit_connection, scalekit_standin, idp_browser, revive_server, mailoutbox, settings
):
    conn, link, link_token = _expired_case(scalekit_connection, scalekit_standin, revive_server, mailoutbox, settings)
    assert _owner_reconnects(link, idp_browser, "ada", broker_services.scalekit_accounts_poll).endswith("/done")
    conn.refresh_from_db()
    assert conn.current_generation == 2
    proof = AuditEvent.objects.get(action="credential.custody_broker", connection_id=conn.pk)
    assert (proof.after["custody"], proof.after["proof"]) == ("scalekit", "id_token")
    details = scalekit_standin.account((conn.broker_integration, conn.broker_connection))["authorization_details"][
        "oauth_token"
    ]
    values = [details["access_token"], details["refresh_token"], details["id_token"], link_token]
    assert all(values) and tables_containing(values, exclude=()) == []


def test_active_again_with_another_account_is_refused_and_stays_blocked(
    scalekit_settings, scalekit_connection, scalekit_standin, idp_browser, revive_server, mailoutbox, settings
):
    conn, link, _ = _expired_case(scalekit_connection, scalekit_standin, revive_server, mailoutbox, settings)
    assert _owner_reconnects(link, idp_browser, "mallory", broker_services.scalekit_accounts_poll).endswith("/refused")
    conn.refresh_from_db()
    assert conn.current_generation == 1
    case = RecoveryCase.objects.get(connection=conn)
    assert case.state == CaseState.AWAITING_OWNER
    req = ReconnectRequest.objects.get(case=case)
    assert (req.state, req.refusals) == (ReconnectRequest.State.ACTIVE, 1)
    assert Connection.objects.get(pk=conn.pk).current_generation == 1
