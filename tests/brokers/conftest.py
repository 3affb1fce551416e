"""Fixtures for broker-held connections: a registered Nango connection and Nango's signed webhook deliveries."""

from __future__ import annotations

import itertools
import json
import os

import pytest

from cases import services as case_services
from lab.nango_standin import NangoStandIn, sign
from lab.scalekit_standin import ScalekitStandIn
from tests.reauth.conftest import (  # noqa: F401  (the lab identity provider and Revive as a process)
    NANGO_SECRET_KEY,
    SCALEKIT_CLIENT_ID,
    SCALEKIT_CLIENT_SECRET,
    idp_browser,
    lab_idp,
    nango_port,
    revive_server,
    scalekit_port,
)
from tests.reauth.conftest import (
    NANGO_SIGNING_KEY as SIGNING_KEY,
)

INTEGRATION = "microsoft-lab"
_seq = itertools.count(1)


@pytest.fixture
def nango_settings(settings):
    settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEY = SIGNING_KEY
    return settings


@pytest.fixture
def nango_connection(db):
    def make(*, subject: str = "1", issuer: str = "http://127.0.0.1:9/idp", upstream: str = "oidc"):
        n = next(_seq)
        return case_services.connection_create(
            connection_id=f"conn_nango_{n}_{os.getpid()}",
            provider="nango",
            upstream_provider=upstream,
            owner_email="ada@contoso.example",
            provider_subject=subject,
            provider_issuer=issuer,
            broker_integration=INTEGRATION,
            broker_connection=f"nango-conn-{n}-{os.getpid()}",
            display_name="Ops mailbox",
            actor="test",
        )

    return make


def auth_event(conn, operation: str, *, success: bool, error: dict | None = None) -> dict:
    event = {
        "from": "nango",
        "type": "auth",
        "operation": operation,
        "connectionId": conn.broker_connection,
        "providerConfigKey": conn.broker_integration,
        "provider": "microsoft",
        "environment": "prod",
        "authMode": "OAUTH2",
        "success": success,
        "endUser": {"endUserId": "u1"},
    }
    if error is not None:
        event["error"] = error
    return event


DEAD = {
    "type": "refresh_token_external_error",
    "description": "The external API returned an error when trying to refresh the access token. "
    '{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired."}',
}
TRANSIENT = {"type": "refresh_token_lock_timeout", "description": "Another refresh is in progress."}


@pytest.fixture
def deliver(client, nango_settings, django_capture_on_commit_callbacks):
    """POST a webhook as Nango does: the raw JSON body signed with the signing key (or a given signature).

    The on-commit work (the owner's notification) runs as it would after the request's commit.
    """

    def post(
        event: dict | bytes,
        *,
        namespace: str = "default",
        signature: str | None = None,
        key: str = SIGNING_KEY,
        raw: bytes | None = None,
    ):
        body = raw if raw is not None else json.dumps(event).encode()
        headers = {} if signature == "" else {"HTTP_X_NANGO_HMAC_SHA256": signature or sign(key, body)}
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(f"/webhooks/nango/{namespace}", data=body, content_type="application/json", **headers)

    return post


@pytest.fixture(scope="session")
def nango_standin(nango_port, lab_idp, revive_server):
    """The Nango stand-in on the port the lab provider knows, sending its webhooks to Revive's process."""
    standin = NangoStandIn(port=nango_port, secret_key=NANGO_SECRET_KEY, signing_key=SIGNING_KEY).start()
    standin.idp = lab_idp
    standin.webhook_url = f"{revive_server.url}/webhooks/nango/default"
    yield standin
    standin.stop()


@pytest.fixture
def nango_owner_case(nango_standin, nango_connection, deliver, lab_idp, mailoutbox, settings, revive_server):
    """A Nango connection of the lab's ``ada`` whose refresh failed (a signed webhook): case open, link e-mailed."""
    import httpx

    from cases.models import RecoveryCase
    from tests.reauth.conftest import link_in

    settings.PUBLIC_BASE_URL = revive_server.url
    issuer = httpx.get(f"{lab_idp.url}/.well-known/openid-configuration", timeout=10).json()["issuer"]
    conn = nango_connection(subject=lab_idp.users["right"]["sub"], issuer=issuer)
    nango_standin.store(
        conn.broker_integration,
        conn.broker_connection,
        {"access_token": "first-access-token-of-ada", "refresh_token": "first-refresh-token-of-ada"},
    )
    assert deliver(auth_event(conn, "refresh", success=False, error=DEAD)).json()["outcome"] == "case_opened"
    link, token = link_in(mailoutbox[-1])
    return conn, RecoveryCase.objects.get(connection=conn), link, token


@pytest.fixture(scope="session")
def scalekit_standin(scalekit_port, lab_idp):
    standin = ScalekitStandIn(
        port=scalekit_port, client_id=SCALEKIT_CLIENT_ID, client_secret=SCALEKIT_CLIENT_SECRET
    ).start()
    standin.idp = lab_idp
    yield standin
    standin.stop()


@pytest.fixture
def scalekit_settings(settings, scalekit_standin):
    from django.core.cache import cache

    settings.REVIVE_SCALEKIT_ENVIRONMENT_URL = scalekit_standin.url
    settings.REVIVE_SCALEKIT_CLIENT_ID = SCALEKIT_CLIENT_ID
    settings.REVIVE_SCALEKIT_CLIENT_SECRET = SCALEKIT_CLIENT_SECRET
    cache.clear()
    return settings


@pytest.fixture
def scalekit_connection(db, scalekit_standin, lab_idp):
    """A Scalekit connected account of the lab's ``ada`` (ACTIVE), registered with Revive."""
    import httpx

    issuer = httpx.get(f"{lab_idp.url}/.well-known/openid-configuration", timeout=10).json()["issuer"]

    def make():
        n = next(_seq)
        identifier = f"user-{n}-{os.getpid()}"
        scalekit_standin.store(
            ("lab-idp", identifier), {"access_token": f"sk-first-access-{n}", "refresh_token": f"sk-first-refresh-{n}"}
        )
        return case_services.connection_create(
            connection_id=f"conn_sk_{n}_{os.getpid()}",
            provider="scalekit",
            upstream_provider="oidc",
            owner_email="ada@contoso.example",
            provider_subject=lab_idp.users["right"]["sub"],
            provider_issuer=issuer,
            broker_integration="lab-idp",
            broker_connection=identifier,
            display_name="Ops mailbox",
            actor="test",
        )

    return make
