"""Revive and the lab identity provider as real processes on loopback: two real callbacks race for one request."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from cases.models import Connection
from reauth.custody import get_custody
from reauth.models import ReconnectRequest

from .conftest import IdpBrowser, link_in, tables_containing

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live(settings, revive_server, lab_idp):
    settings.PUBLIC_BASE_URL = revive_server.url
    return revive_server


def test_two_real_callbacks_race_and_exactly_one_reconnects(live, lab_idp, owner_case, mailoutbox):
    oc = owner_case()
    link, link_token = link_in(mailoutbox[-1])
    assert link.startswith(live.url)

    owner = httpx.Client(timeout=30)
    landing = owner.get(link)
    assert landing.status_code == 302 and link_token not in landing.headers["location"]
    landing = owner.get(live.url + landing.headers["location"])
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', landing.text).group(1)
    start_path = re.search(r'<form class="action" method="post" action="([^"]+)"', landing.text).group(1)
    # The owner pressed the button in two tabs; both sign-ins complete at the provider.
    starts = [
        owner.post(live.url + start_path, data={"csrfmiddlewaretoken": csrf}, headers={"Referer": str(landing.url)})
        for _ in range(2)
    ]
    assert all(s.status_code == 302 and s.headers["location"].startswith(lab_idp.url) for s in starts)
    idp = IdpBrowser(lab_idp)
    callbacks = [idp.authorize(s.headers["location"], "ada") for s in starts]
    assert len(set(callbacks)) == 2

    results: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def call(url):
        with httpx.Client(timeout=30, cookies=owner.cookies) as tab:
            barrier.wait(timeout=30)
            results.append(tab.get(url))

    threads = [threading.Thread(target=call, args=(url,)) for url in callbacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    outcomes = sorted(
        (r.status_code, r.headers.get("location", ""), r.headers.get("x-revive-code", "")) for r in results
    )
    assert outcomes[0][0] == 302 and outcomes[0][1].endswith("/done"), outcomes
    assert outcomes[1][0] == 410 and outcomes[1][2] == "RECONNECT_LINK_USED", outcomes
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2
    assert oc.request.state == ReconnectRequest.State.CONSUMED

    grant = get_custody().load(connection_id=oc.connection_id)
    secrets_ = [grant.access_token, grant.refresh_token, link_token]
    assert tables_containing(secrets_) == []
    for log in (live.log, lab_idp.log):
        text = log.read_text()
        assert not any(s in text for s in secrets_), log
        assert "/reconnect/l/[redacted]" in text or log == lab_idp.log
    owner.close()
