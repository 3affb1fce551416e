"""The Nango and Scalekit reconnects in a real browser (Playwright + Debian's Chromium), JavaScript off for the owner.

Revive's page links to Nango's Connect UI (the stand-in) in a new tab; the owner signs in at the lab identity
provider there; the first tab follows along (it refreshes itself) and lands on the done page -- or, for the wrong
account, on the refused page saying that Nango now holds that account's grant and the connection stays paused.
"""

from __future__ import annotations

import re

import pytest

from cases.models import Connection
from reauth.models import ReconnectRequest
from tests.reauth.conftest import LAB_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def owner_context(chromium):
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    yield context
    context.close()


def reconnect_at_nango(context, link: str, lab_idp, username: str, tmp_path, broker: str = "Nango"):
    page = context.new_page()
    page.goto(link)
    assert page.get_by_role("heading", level=1).inner_text() == f"Reconnect your {broker} account"
    page.get_by_role("button").click()
    page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/broker$"))
    page.screenshot(path=str(tmp_path / f"{username}-broker.png"), full_page=True)
    with context.expect_page() as opened:
        page.get_by_role("link", name=f"Open {broker} to reconnect").click()
    nango = opened.value
    nango.wait_for_url(re.compile(re.escape(lab_idp.url) + r"/accounts/login/.*"))
    nango.fill("input[name=login]", username)
    nango.fill("input[name=password]", LAB_PASSWORD)
    nango.locator("form").filter(has=nango.locator("input[name=password]")).locator("button[type=submit]").click()
    nango.wait_for_url(re.compile(r".*/oauth/callback\?.*"))
    assert re.search("Connection updated|Account connected", nango.content())
    nango.close()
    page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/(done|refused)$"), timeout=90_000)
    page.screenshot(path=str(tmp_path / f"{username}-outcome.png"), full_page=True)
    return page


def test_the_owner_reconnects_through_nango_in_a_browser(owner_context, nango_owner_case, lab_idp, tmp_path):
    conn, case, link, _ = nango_owner_case
    page = reconnect_at_nango(owner_context, link, lab_idp, "ada", tmp_path)
    assert page.url.endswith("/done")
    assert page.locator("[data-generation]").get_attribute("data-generation") == "2"
    assert Connection.objects.get(pk=conn.pk).current_generation == 2


def test_the_wrong_account_at_nango_is_refused_in_a_browser(owner_context, nango_owner_case, lab_idp, tmp_path):
    conn, case, link, _ = nango_owner_case
    page = reconnect_at_nango(owner_context, link, lab_idp, "mallory", tmp_path)
    assert page.url.endswith("/refused")
    assert page.get_by_role("heading", level=1).inner_text() == "That account does not own this connection"
    text = page.content()
    assert "Nango now holds the sign-in of the account you used" in text and lab_idp.users["wrong"]["email"] in text
    assert Connection.objects.get(pk=conn.pk).current_generation == 1
    req = ReconnectRequest.objects.get(case=case)
    assert (req.state, req.refusals) == (ReconnectRequest.State.ACTIVE, 1)
    assert page.get_by_role("button").count() == 1  # try again with the right account


@pytest.fixture
def scalekit_case(scalekit_settings, scalekit_connection, scalekit_standin, revive_server, mailoutbox, settings):
    """An expired Scalekit account seen by the poll (case open, link e-mailed), and a poll running as beat would."""
    import threading

    from django.db import connection as db

    from reauth.brokers import services as broker_services
    from tests.reauth.conftest import link_in

    settings.PUBLIC_BASE_URL = revive_server.url
    conn = scalekit_connection()
    broker_services.scalekit_accounts_poll()
    with scalekit_standin._lock:
        scalekit_standin.accounts[(conn.broker_integration, conn.broker_connection)]["status"] = "EXPIRED"
    broker_services.scalekit_accounts_poll()
    link, _ = link_in(mailoutbox[-1])
    stop = threading.Event()

    def beat():
        try:
            while not stop.wait(0.3):
                broker_services.scalekit_accounts_poll()
        finally:
            db.close()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield conn, link
    stop.set()
    thread.join(30)


@pytest.mark.parametrize("username, generation, outcome", [("ada", 2, "done"), ("mallory", 1, "refused")])
def test_the_scalekit_reconnect_in_a_browser(
    owner_context, scalekit_case, lab_idp, tmp_path, username, generation, outcome
):
    conn, link = scalekit_case
    page = reconnect_at_nango(owner_context, link, lab_idp, username, tmp_path, broker="Scalekit")
    assert page.url.endswith(f"/{outcome}")
    assert Connection.objects.get(pk=conn.pk).current_generation == generation
    if outcome == "refused":
        assert "Scalekit now holds the sign-in of the account you used" in page.content()
