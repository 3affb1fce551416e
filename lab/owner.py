"""The account owner in a scenario: their browser on Revive's reconnect pages, and their mailbox.

``Owner`` follows Revive's real pages and the provider's real redirects (the provider's sign-in through
``IdpSession``; a broker's Connect UI; an upstream's consent page behind Auth0 Token Vault); ``reconnect_link``
finds the link Revive e-mailed them.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from urllib.parse import parse_qs, urlsplit

import httpx

from .idp.driver import IdpSession
from .waiting import WAIT, ScenarioFailed, wait_for
from .world import LabWorld

_LINK = re.compile(r"(https?://\S+/reconnect/l/rvr_[A-Za-z0-9_-]+)")
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_START = re.compile(r'<form[^>]*method="post"[^>]*action="([^"]*/start[^"]*)"')
_BROKER_LINK = re.compile(r'id="broker-link" href="([^"]+)"')


class Owner:
    """The account owner's browser on Revive's reconnect pages (the provider's pages through ``IdpSession``)."""

    def __init__(self, world: LabWorld) -> None:
        self.world = world
        self.http = httpx.Client(timeout=WAIT, follow_redirects=False)
        self.landing = ""
        self.authorize_urls: list[str] = []

    def close(self) -> None:
        self.http.close()

    def open_link(self, link: str) -> None:
        response = self.http.get(link)
        if response.status_code != 302:
            raise ScenarioFailed(f"the reconnect link answered {response.status_code}")
        self.landing = str(response.url.join(response.headers["location"]))

    def _upstream_consent(self, connect_url: str, username: str) -> str:
        """The upstream provider's page behind a Connected Accounts ``connect_uri``: choose the account."""
        with httpx.Client(timeout=WAIT, follow_redirects=False) as upstream:
            page = upstream.get(connect_url)
            ticket = parse_qs(urlsplit(connect_url).query).get("ticket", [""])[0]
            if page.status_code != 200:
                raise ScenarioFailed(f"the upstream consent page answered {page.status_code}")
            back = upstream.post(
                str(page.url.join("/upstream/authorize")), data={"ticket": ticket, "account": username}
            )
        if back.status_code != 302:
            raise ScenarioFailed(f"the upstream consent answered {back.status_code}")
        return back.headers["location"]

    def sign_in(self, username: str) -> dict:
        """Press the button on the landing page, sign in at the provider as ``username``, come back to Revive."""
        page = self.http.get(self.landing)
        csrf, start = _CSRF.search(page.text), _START.search(page.text)
        if page.status_code != 200 or not csrf or not start:
            raise ScenarioFailed(f"no reconnect button on {self.landing}: {page.status_code}")
        response = self.http.post(
            str(page.url.join(start.group(1))),
            data={"csrfmiddlewaretoken": csrf.group(1)},
            headers={"Referer": self.landing},
        )
        if response.status_code != 302:
            raise ScenarioFailed(f"starting the sign-in answered {response.status_code}")
        self.authorize_urls.append(response.headers["location"])
        if "/broker" in response.headers["location"]:
            return self._through_broker(str(response.url.join(response.headers["location"])), username)
        if self.world.vault is not None and response.headers["location"].startswith(self.world.vault.url):
            callback = self._upstream_consent(response.headers["location"], username)
        else:
            with IdpSession(self.world.idp) as person:
                callback = person.authorize(response.headers["location"], username)
        response = self.http.get(callback)  # Revive verifies the identity here (and, when it matches, resumes)
        outcome = response.headers.get("location", "")
        page = self.http.get(str(response.url.join(outcome))) if response.is_redirect else response
        return {
            "status": response.status_code,
            "location": outcome,
            "page_status": page.status_code,
            "code": page.headers.get("x-revive-code", ""),
            "consumed": outcome.endswith("/done"),
            "refused": outcome.endswith("/refused"),
            "claims": parse_qs(urlsplit(self.authorize_urls[-1]).query).get("claims", [""])[0],
        }

    def _through_broker(self, waiting: str, username: str) -> dict:
        """Revive's waiting page links to the broker's Connect UI; sign in there, then follow the waiting page."""
        page = self.http.get(waiting)
        link = _BROKER_LINK.search(page.text)
        if page.status_code != 200 or not link:
            raise ScenarioFailed(f"no broker link on {waiting}: {page.status_code}")
        import html

        with IdpSession(self.world.idp) as person:
            callback = person.authorize(html.unescape(link.group(1)), username)
            done = person.http.get(callback)  # the broker stores the grant and tells Revive (signed webhook)
        if done.status_code != 200:
            raise ScenarioFailed(f"the broker's callback answered {done.status_code}")

        def outcome():
            response = self.http.get(waiting)
            location = response.headers.get("location", "") if response.is_redirect else ""
            return location if location.endswith(("/done", "/refused")) else None

        location = wait_for(outcome, "Revive to prove the identity behind the broker's reconnect")
        page = self.http.get(str(httpx.URL(waiting).join(location)))
        return {
            "status": 302,
            "location": location,
            "page_status": page.status_code,
            "code": page.headers.get("x-revive-code", ""),
            "consumed": location.endswith("/done"),
            "refused": location.endswith("/refused"),
        }


def reconnect_link(world: LabWorld, case_reference: str, *, timeout: float = WAIT) -> str:
    """The link Revive e-mailed the owner for this case (the newest, if it was resent)."""

    def find():
        found = []
        for path in sorted(world.mailbox.glob("*.log"), key=lambda p: p.stat().st_mtime):
            for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
                msg = message_from_bytes(chunk.strip())
                if msg.get("X-Revive-Case") == case_reference:
                    match = _LINK.search(chunk.decode(errors="replace"))
                    if match:
                        found.append(match.group(1))
        return found[-1] if found else None

    return wait_for(find, f"the reconnect e-mail of {case_reference}", timeout=timeout)
