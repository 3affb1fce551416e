"""The SDK's Auth0 Token Vault helper against the local stand-in, and what Revive makes of a refused exchange."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lab.token_vault_standin import FEDERATED_TOKEN_TYPE
from revive_sdk import ProviderError, Revive, RunParked
from revive_sdk.auth0 import GRANT_TYPE, AsyncTokenVault, TokenVault, exchange_form

USER, CONNECTION = "auth0|ada", "google-oauth2"


@pytest.fixture
def vault(token_vault_standin):
    return token_vault_standin


@pytest.fixture
def helper(vault):
    client = TokenVault(vault.url, vault.client_id, vault.client_secret)
    yield client
    client.close()


def test_the_exchange_sends_auth0s_parameters():
    form = exchange_form(
        client_id="cid",
        client_secret="secret",
        connection="google-oauth2",
        subject_token="rt",
        login_hint="ada@contoso.example",
    )

    assert form == {
        "grant_type": "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token",
        "client_id": "cid",
        "client_secret": "secret",
        "subject_token": "rt",
        "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
        "requested_token_type": "http://auth0.com/oauth/token-type/federated-connection-access-token",
        "connection": "google-oauth2",
        "login_hint": "ada@contoso.example",
    }
    assert (
        exchange_form(
            client_id="c", client_secret="", connection="x", subject_token="at", subject_token_type="access_token"
        )["subject_token_type"]
        == "urn:ietf:params:oauth:token-type:access_token"
    )
    with pytest.raises(ValueError):
        exchange_form(client_id="c", client_secret="", connection="x", subject_token="t", subject_token_type="id_token")


def test_exchange_returns_the_upstream_token_and_never_shows_it(vault, helper):
    session = vault.sign_in(USER, connection=CONNECTION, upstream="ada")

    token = helper.exchange(connection=CONNECTION, subject_token=session)

    assert token.access_token in vault.upstream_tokens and token.issued_token_type == FEDERATED_TOKEN_TYPE
    assert token.access_token not in repr(token) and token.expires_at is not None
    assert helper.credential(connection=CONNECTION, subject_token=lambda: session)() in vault.upstream_tokens


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("upstream_gone", 401, "federated_connection_refresh_token_not_found"),
        ("bad_subject", 403, "invalid_grant"),
        ("bad_client", 401, "invalid_client"),
    ],
)
def test_a_refused_exchange_raises_provider_error_with_auth0s_answer(vault, fault, status, error):
    session = vault.sign_in(USER, connection=CONNECTION, upstream="ada")
    if fault == "upstream_gone":
        vault.revoke_upstream(USER, CONNECTION)
    client = TokenVault(vault.url, vault.client_id, "wrong" if fault == "bad_client" else vault.client_secret)

    with pytest.raises(ProviderError) as refused:
        client.exchange(connection=CONNECTION, subject_token="nope" if fault == "bad_subject" else session)
    client.close()

    assert (refused.value.status, refused.value.body["error"]) == (status, error)


def test_an_unreachable_vault_is_a_network_error():
    client = TokenVault("http://127.0.0.1:9", "cid", "secret", timeout=2.0)

    with pytest.raises(ProviderError) as failed:
        client.exchange(connection=CONNECTION, subject_token="rt")

    assert failed.value.error_kind == "connection_error" and failed.value.status is None


def test_async_helper(vault):
    session = vault.sign_in(USER, connection=CONNECTION, upstream="ada")

    async def main():
        client = AsyncTokenVault(vault.url, vault.client_id, vault.client_secret)
        try:

            async def subject():
                return session

            return await client.credential(connection=CONNECTION, subject_token=subject)()
        finally:
            await client.aclose()

    assert asyncio.run(main()) in vault.upstream_tokens


@pytest.mark.django_db(transaction=True)
def test_a_gone_upstream_grant_parks_the_run_as_relink_required(
    vault, helper, make_connection, make_run, worker_key, revive_url
):
    from cases.models import RecoveryCase

    conn = make_connection(
        provider="auth0_token_vault", provider_tenant=CONNECTION, provider_issuer=vault.upstream_issuer
    )
    run = make_run()
    session = vault.sign_in(USER, connection=CONNECTION, upstream="ada")
    vault.revoke_upstream(USER, CONNECTION)

    with Revive(revive_url, worker_key) as revive, pytest.raises(RunParked) as parked:
        revive.protect_action(
            run_id=run.pk,
            checkpoint_id="05",
            connection_id=conn.pk,
            action_key="send_exec_05",
            credential=helper.credential(connection=CONNECTION, subject_token=lambda: session),
            execute=lambda ctx: httpx.post("http://127.0.0.1:9/never"),
        )

    case = RecoveryCase.objects.get(reference=parked.value.case_id)
    assert (case.failure_class, case.provider_code, case.owner_required) == (
        "relink_required",
        "federated_connection_refresh_token_not_found",
        True,
    )
    assert GRANT_TYPE.endswith("federated-connection-access-token")
