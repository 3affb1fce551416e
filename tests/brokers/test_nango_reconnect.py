"""The owner reconnects a Nango connection: Revive's page → Nango's reconnect session → Connect UI at the lab
identity provider → Nango's ``override`` webhook → Revive proves the identity from the verified ID token in the
connection's raw credentials → generation advanced, or refused with the connection still blocked.

Revive and the lab provider run as processes; the Nango stand-in speaks Nango's API and signs its webhooks.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from audit.models import AuditEvent
from cases.models import CaseState, CredentialGeneration
from reauth.models import BrokerSignal, CustodyGrant, ReconnectRequest
from tests.reauth.conftest import tables_containing

pytestmark = pytest.mark.django_db(transaction=True)
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_BROKER_LINK = re.compile(r'id="broker-link" href="([^"]+)"')


class Owner:
    def __init__(self):
        self.http = httpx.Client(timeout=30, follow_redirects=False)

    def start(self, link: str) -> str:
        landing = self.http.get(link)
        assert landing.status_code == 302, landing.text[:300]
        page = self.http.get(str(landing.url.join(landing.headers["location"])))
        assert "Reconnect your Nango account" in page.text
        started = self.http.post(
            str(page.url).rstrip("/") + "/start",
            data={"csrfmiddlewaretoken": _CSRF.search(page.text).group(1)},
            headers={"Referer": str(page.url)},
        )
        assert started.status_code == 302 and started.headers["location"].endswith("/broker"), started.text[:300]
        return str(started.url.join(started.headers["location"]))

    def at_broker(self, waiting: str, idp_browser, username: str) -> str:
        page = self.http.get(waiting)
        assert page.status_code == 200 and "Open Nango to reconnect" in page.text
        connect = _BROKER_LINK.search(page.text).group(1).replace("&amp;", "&")
        callback = idp_browser.authorize(connect, username)
        assert "/oauth/callback" in callback
        assert idp_browser.http.get(callback).status_code == 200  # Nango stores the grant and sends the webhook
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = self.http.get(waiting)
            if answer.is_redirect:
                return answer.headers["location"]
            time.sleep(0.2)
        pytest.fail("Revive never settled the broker's reconnect")


def test_the_right_account_advances_the_generation_and_no_token_is_stored_anywhere(
    nango_owner_case, nango_standin, idp_browser, revive_server
):
    conn, case, link, link_token = nango_owner_case
    owner = Owner()
    outcome = owner.at_broker(owner.start(link), idp_browser, "ada")
    assert outcome.endswith("/done")
    conn.refresh_from_db()
    assert conn.current_generation == 2
    case.refresh_from_db()
    assert case.resumed_generation == 2 and case.state != CaseState.AWAITING_OWNER
    assert ReconnectRequest.objects.get(case=case).state == ReconnectRequest.State.CONSUMED
    custody = AuditEvent.objects.get(action="credential.custody_broker", connection_id=conn.pk)
    assert (custody.after["custody"], custody.after["proof"], custody.after["reference"]) == (
        "nango",
        "id_token",
        conn.broker_connection,
    )
    assert not CustodyGrant.objects.filter(connection=conn).exists()

    held = nango_standin.credentials(conn.broker_connection, conn.broker_integration)
    values = [
        held["access_token"],
        held["refresh_token"],
        held["raw"]["id_token"],
        link_token,
        "first-access-token-of-ada",
    ]
    assert all(values)
    assert tables_containing(values, exclude=()) == []  # not in custody either: Nango keeps the grant
    assert not any(v in revive_server.log.read_text() for v in values)


def test_the_wrong_account_is_refused_and_the_connection_stays_blocked(
    nango_owner_case, nango_standin, idp_browser, lab_idp
):
    conn, case, link, _ = nango_owner_case
    owner = Owner()
    waiting = owner.start(link)
    outcome = owner.at_broker(waiting, idp_browser, "mallory")
    assert outcome.endswith("/refused")
    page = owner.http.get(str(httpx.URL(waiting).join(outcome)))
    assert page.status_code == 403 and page.headers["X-Revive-Code"] == "RECONNECT_IDENTITY_MISMATCH"
    assert "Nango now holds the sign-in of the account you used" in page.text
    assert lab_idp.users["wrong"]["email"] in page.text
    conn.refresh_from_db()
    assert conn.current_generation == 1
    assert CredentialGeneration.objects.get(connection=conn, number=1).state == CredentialGeneration.State.REJECTED
    req = ReconnectRequest.objects.get(case=case)
    assert (req.state, req.refusals) == (ReconnectRequest.State.ACTIVE, 1)
    refused = AuditEvent.objects.get(action="reconnect.identity_mismatch", connection_id=conn.pk)
    assert refused.arguments["presented"]["subject"] == lab_idp.users["wrong"]["sub"]
    assert refused.arguments["expected"]["subject"] == lab_idp.users["right"]["sub"]
    assert refused.arguments["custody"] == "Nango"

    # The same link, the right account this time: a new Nango session, a new override, the generation advances.
    idp_browser.http.cookies.clear()  # sign out at the provider
    assert owner.at_broker(_restart(owner, waiting), idp_browser, "ada").endswith("/done")
    conn.refresh_from_db()
    assert conn.current_generation == 2
    assert BrokerSignal.objects.filter(connection=conn, kind="auth.override").count() == 2


def _restart(owner: Owner, waiting: str) -> str:
    """Press the refused page's button again (a new Nango reconnect session)."""
    refused = owner.http.get(waiting.replace("/broker", "/refused"))
    started = owner.http.post(
        waiting.replace("/broker", "/start"),
        data={"csrfmiddlewaretoken": _CSRF.search(refused.text).group(1)},
        headers={"Referer": waiting},
    )
    assert started.status_code == 302 and started.headers["location"].endswith("/broker")
    return waiting
