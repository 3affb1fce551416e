"""The owner's path in a real browser: Playwright drives Debian's Chromium against Revive and the lab identity
provider, both running as processes on loopback.

The owner opens the e-mailed link, presses the one button, signs in at the provider, and lands on the done page
with the generation advanced -- or, as the wrong user or as the same subject in another tenant, on the refused
page with the generation unchanged. JavaScript is off for the owner's browser: the pages work without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cases.models import CaseState, Connection
from reauth.custody import get_custody
from reauth.models import ReconnectRequest

from .conftest import FABRIKAM_TID, LAB_PASSWORD, link_in, tables_containing

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def owner_browser(chromium):
    """A fresh browser profile with JavaScript off, phone-sized."""
    context = chromium.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.seen = []  # the HTML of every page the owner saw, for the leak checks
    yield page
    context.close()


@pytest.fixture
def emailed_link(settings, revive_server, lab_idp, owner_case, mailoutbox):
    settings.PUBLIC_BASE_URL = revive_server.url
    oc = owner_case()
    link, token = link_in(mailoutbox[-1])
    return oc, link, token


def sign_in_at_provider(page, lab_idp, username: str) -> None:
    page.wait_for_url(re.compile(re.escape(lab_idp.url) + r"/accounts/login/.*"))
    page.seen.append(page.content())
    page.fill("input[name=login]", username)
    page.fill("input[name=password]", LAB_PASSWORD)
    page.locator("form").filter(has=page.locator("input[name=password]")).locator("button[type=submit]").click()


def open_and_start(page, link: str, tmp_path: Path, shot: str) -> None:
    page.goto(link)
    assert re.search(r"/reconnect/r/[0-9a-f-]{36}/$", page.url)
    assert page.get_by_role("heading", level=1).inner_text().startswith("Reconnect your Microsoft Entra ID account")
    assert page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"
    )  # no sideways scrolling on a phone
    page.screenshot(path=str(tmp_path / f"{shot}-landing.png"), full_page=True)
    page.seen.append(page.content())
    buttons = page.get_by_role("button")
    assert buttons.count() == 1
    buttons.first.click()


def test_the_owner_reconnects_in_a_browser(owner_browser, emailed_link, revive_server, lab_idp, tmp_path):
    oc, link, link_token = emailed_link
    page = owner_browser
    open_and_start(page, link, tmp_path, "right")
    sign_in_at_provider(page, lab_idp, "ada")
    page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/done$"))
    page.screenshot(path=str(tmp_path / "right-done.png"), full_page=True)
    page.seen.append(page.content())

    assert page.get_by_role("heading", level=1).inner_text() == "You're reconnected — thank you"
    assert page.locator("[data-generation]").get_attribute("data-generation") == "2"
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2
    case = oc.refresh()
    assert case.resumed_generation == 2 and case.state not in (CaseState.OPENED, CaseState.AWAITING_OWNER)
    assert oc.request.state == ReconnectRequest.State.CONSUMED

    grant = get_custody().load(connection_id=oc.connection_id)
    secrets_ = [grant.access_token, grant.refresh_token, link_token]
    assert all(secrets_)
    assert tables_containing(secrets_) == []
    assert len(page.seen) == 3  # landing, provider sign-in, done
    for html in page.seen:
        assert not any(s in html for s in secrets_)
    for log in (revive_server.log, lab_idp.log):
        assert not any(s in log.read_text() for s in secrets_), log

    # The link is spent: opening it again says so.
    page.goto(link)
    assert "already been used" in page.content()


@pytest.mark.parametrize(
    "username, reason", [("mallory", "the wrong user"), ("ada-fabrikam", "the right subject in another tenant")]
)
def test_another_account_is_refused_in_a_browser(owner_browser, emailed_link, lab_idp, tmp_path, username, reason):
    oc, link, _ = emailed_link
    page = owner_browser
    open_and_start(page, link, tmp_path, username)
    sign_in_at_provider(page, lab_idp, username)
    page.wait_for_url(re.compile(r".*/reconnect/r/[0-9a-f-]{36}/refused$"))
    page.screenshot(path=str(tmp_path / f"{username}-refused.png"), full_page=True)
    page.seen.append(page.content())

    heading = {
        "mallory": "That account does not own this connection",
        "ada-fabrikam": "You signed in to another tenant",
    }
    assert page.get_by_role("heading", level=1).inner_text() == heading[username]  # it names what differed
    alert = page.get_by_role("alert").inner_text()
    if username == "mallory":  # another account: named; the right account in another tenant: the tenant is named
        assert lab_idp.users["wrong"]["email"] in alert
    assert "a•••@contoso.example" in alert
    if username == "ada-fabrikam":
        assert FABRIKAM_TID in alert
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 1, reason
    req = oc.request
    assert (req.state, req.refusals) == (ReconnectRequest.State.ACTIVE, 1)
    assert page.get_by_role("button").count() == 1  # try again with the right account
