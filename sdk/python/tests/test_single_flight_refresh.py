"""Single-flight refresh: many workers on one expired access token cause one refresh at the provider.

The provider stand-in rotates refresh tokens as Auth0 does and revokes the whole family when a retired refresh
token is presented again, so a second, uncoordinated refresh is not just wasteful: it kills the grant. Revive's
refresh claim carries decisions only; the refreshed grant goes where the credential lives (here a vault object
shared by the workers, as Revive's credential custody or a secrets manager would be).
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from audit.models import AuditEvent
from lab.provider_standin import ProviderStandIn
from revive_sdk import AsyncRevive, ProviderError, Revive, RunParked

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 20


class Vault:
    """Where the grant lives: an access token with its expiry, and the (rotating) refresh token."""

    def __init__(self, refresh_token: str) -> None:
        self._lock = threading.Lock()
        self.access_token = "expired-access-token"
        self.expires_at = time.time() - 60
        self.refresh_token = refresh_token

    def load(self) -> str | None:
        with self._lock:
            return self.access_token if self.expires_at > time.time() + 30 else None

    def refresh_at(self, standin: ProviderStandIn) -> str:
        with self._lock:
            presented = self.refresh_token
        resp = httpx.post(
            f"{standin.url}/oauth2/v2.0/token",
            timeout=30,
            data={"grant_type": "refresh_token", "refresh_token": presented, "client_id": "lab"},
        )
        if resp.status_code != 200:
            raise ProviderError(resp.status_code, resp.json(), dict(resp.headers))
        token = resp.json()
        with self._lock:
            self.access_token, self.refresh_token = token["access_token"], token["refresh_token"]
            self.expires_at = time.time() + token["expires_in"]
        return token["access_token"]


@pytest.fixture
def standin():
    server = ProviderStandIn(provider="auth0", rotating=True).start()
    server.token_delay = 0.5  # the refresh is slow enough for every worker to arrive while it runs
    yield server
    server.stop()


@pytest.fixture
def rotating(make_connection, make_run, standin):
    conn = make_connection(provider="auth0", provider_issuer="https://contoso.auth0.example/")
    runs = [make_run(f"run_sf_{conn.pk}_{i}").pk for i in range(WORKERS)]
    return conn.pk, runs, Vault(standin.issue_refresh_token())


def run_workers(count: int, target) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def body(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_twenty_workers_on_one_expired_token_cause_exactly_one_refresh(rotating, standin, worker_key, revive_url):
    conn_id, runs, vault = rotating

    def worker(i: int) -> dict:
        with Revive(revive_url, worker_key) as revive:  # one client per worker, as separate processes would have
            credential = revive.single_flight_credential(
                conn_id,
                load=vault.load,
                refresh=lambda: vault.refresh_at(standin),
                is_fresh=lambda token: token is not None,
            )
            return revive.protect_action(
                run_id=runs[i],
                checkpoint_id="05",
                connection_id=conn_id,
                action_key="send_exec_05",
                credential=credential,
                execute=lambda ctx: {"token": ctx.credential},
            )

    results = run_workers(WORKERS, worker)

    assert [r for r in results if isinstance(r, BaseException)] == []
    assert (standin.refreshes, standin.reuse_detected) == (1, 0)
    assert len({r["token"] for r in results}) == 1 and results[0]["token"] == vault.access_token
    assert AuditEvent.objects.filter(action="refresh.claimed", connection_id=conn_id).count() == 1
    assert AuditEvent.objects.filter(action="refresh.refreshed", connection_id=conn_id).count() == 1


def test_without_the_claim_the_same_workers_trip_reuse_detection(rotating, standin):
    """The control: twenty uncoordinated refreshes of one rotating refresh token kill the grant."""
    _, _, vault = rotating

    def worker(i: int):
        return vault.refresh_at(standin)

    results = run_workers(WORKERS, worker)

    assert standin.reuse_detected >= 1
    assert any(isinstance(r, ProviderError) for r in results)


def test_async_workers_share_one_refresh(rotating, standin, worker_key, revive_url):
    conn_id, runs, vault = rotating

    async def main() -> list:
        async def refresh() -> str:
            return await asyncio.to_thread(vault.refresh_at, standin)

        async def worker(i: int):
            async with AsyncRevive(revive_url, worker_key) as revive:
                credential = revive.single_flight_credential(
                    conn_id, load=vault.load, refresh=refresh, is_fresh=lambda token: token is not None
                )
                return await revive.protect_action(
                    run_id=runs[i],
                    checkpoint_id="05",
                    connection_id=conn_id,
                    action_key="send_exec_05",
                    credential=credential,
                    execute=lambda ctx: {"token": ctx.credential},
                )

        return await asyncio.gather(*(worker(i) for i in range(8)))

    results = asyncio.run(main())

    assert standin.refreshes == 1 and len({r["token"] for r in results}) == 1


def test_a_rejected_credential_is_refreshed_again_in_a_new_round(rotating, standin, worker_key, revive_url):
    conn_id, runs, vault = rotating
    with Revive(revive_url, worker_key) as revive:
        credential = revive.single_flight_credential(
            conn_id,
            load=vault.load,
            refresh=lambda: vault.refresh_at(standin),
            is_fresh=lambda token: token is not None,
        )
        first = credential()
        assert (credential.round, credential()) == (1, first)  # fresh: loaded, not refreshed
        credential.rejected()  # e.g. the API answered 401 and protect_action raised RefreshRequired
        second = credential()

    assert second != first and credential.round == 2 and standin.refreshes == 2 and standin.reuse_detected == 0


def test_a_dead_grant_found_by_the_holder_parks_every_run(rotating, standin, worker_key, revive_url):
    conn_id, runs, vault = rotating
    standin.revoked = True  # the provider refuses every refresh: Auth0's invalid_grant
    count = 5

    def worker(i: int):
        with Revive(revive_url, worker_key) as revive:
            credential = revive.single_flight_credential(
                conn_id,
                load=vault.load,
                refresh=lambda: vault.refresh_at(standin),
                is_fresh=lambda token: token is not None,
            )
            return revive.protect_action(
                run_id=runs[i],
                checkpoint_id="05",
                connection_id=conn_id,
                action_key="send_exec_05",
                credential=credential,
                execute=lambda ctx: {"token": ctx.credential},
            )

    results = run_workers(count, worker)

    assert all(isinstance(r, RunParked) for r in results), results
    assert len({r.case_id for r in results}) == 1  # one case, every run on it
    assert AuditEvent.objects.filter(action="refresh.failed", connection_id=conn_id).count() >= 1
