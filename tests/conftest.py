from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from cases import services
from cases.models import Runtime

_seq = itertools.count(1)


@pytest.fixture(autouse=True)
def _forget_cached_api_keys():
    """Each test starts with an empty API-key cache (keys live in each test's own database)."""
    services.api_key_cache.clear()
    yield
    services.api_key_cache.clear()


@pytest.fixture
def make_connection(db):
    def make(connection_id: str | None = None, **kw):
        n = next(_seq)
        return services.connection_create(
            connection_id=connection_id or f"conn_test_{n}",
            provider=kw.pop("provider", "entra"),
            owner_email=kw.pop("owner_email", f"owner{n}@example.com"),
            provider_subject=kw.pop("provider_subject", f"oid-{n}"),
            provider_tenant=kw.pop("provider_tenant", "tid-contoso"),
            **kw,
        )

    return make


@pytest.fixture
def held_outbox(monkeypatch):
    """Owed steps are written but not dispatched (as if Redis lost every message): ``held_outbox.resumes()`` lists
    the owed resume deliveries as (run, case, generation); ``held_outbox.dispatched`` the row ids sent."""
    from cases import outbox
    from cases.models import OutboxItem

    class Held:
        dispatched: list[int] = []

        @staticmethod
        def resumes() -> list[tuple]:
            return [
                (p["run_id"], p["case_id"], p["generation"])
                for p in OutboxItem.objects.filter(kind=services.RESUME_RUN)
                .order_by("pk")
                .values_list("payload", flat=True)
            ]

    Held.dispatched = []
    monkeypatch.setattr(outbox, "_enqueue", lambda item_ids, countdown=None: Held.dispatched.extend(item_ids))
    return Held


@pytest.fixture
def held_resumes(monkeypatch):
    """Like ``held_outbox``, but only the resume deliveries are held: the owner is still notified, reconciliation
    still runs."""
    from cases import outbox
    from cases.models import OutboxItem

    real = outbox._enqueue

    class Held:
        @staticmethod
        def resumes() -> list[tuple]:
            return [
                (p["run_id"], p["case_id"], p["generation"])
                for p in OutboxItem.objects.filter(kind=services.RESUME_RUN)
                .order_by("pk")
                .values_list("payload", flat=True)
            ]

    def enqueue(item_ids, countdown=None):
        held = set(OutboxItem.objects.filter(pk__in=item_ids, kind=services.RESUME_RUN).values_list("pk", flat=True))
        if rest := [pk for pk in item_ids if pk not in held]:
            real(rest, countdown)

    monkeypatch.setattr(outbox, "_enqueue", enqueue)
    return Held


def worker_passes(run_id: str, connection_id: str, action_key: str, *, checkpoint_id: str = "05") -> str:
    """What a resumed worker does at its parked action: begin it with the current generation and commit it."""
    from cases.models import Connection

    generation = Connection.objects.get(pk=connection_id).current_generation
    begun = services.action_begin(
        run_id=run_id,
        checkpoint_id=checkpoint_id,
        connection_id=connection_id,
        action_key=action_key,
        generation=generation,
        actor="worker:test",
    )
    if begun.decision == "execute":
        services.action_commit(run_id=run_id, action_key=action_key, generation=generation, actor="worker:test")
    return begun.decision


@pytest.fixture
def make_run(db):
    def make(run_id: str | None = None, **kw):
        return services.run_register(
            run_id=run_id or f"run_{next(_seq)}",
            runtime=kw.pop("runtime", Runtime.LANGGRAPH),
            runtime_ref=kw.pop("runtime_ref", {"thread_id": "t-1"}),
            workflow_name=kw.pop("workflow_name", "Nightly executive briefing"),
            actor="test",
        )

    return make


@pytest.fixture
def worker_key(db):
    key, raw = services.api_key_create(name=f"worker-{next(_seq)}")
    return raw


@pytest.fixture
def api(client, worker_key):
    """The worker API through Django's test client, authenticated."""

    class Api:
        key = worker_key

        def post(self, path, body=None, key=worker_key):
            headers = {"HTTP_X_API_KEY": key} if key else {}
            return client.post(
                f"/api/v1{path}", data=body if body is not None else {}, content_type="application/json", **headers
            )

        def get(self, path, key=worker_key):
            headers = {"HTTP_X_API_KEY": key} if key else {}
            return client.get(f"/api/v1{path}", **headers)

    return Api()


DEAD_GRANT = {
    "status": 400,
    "body": {
        "error": "invalid_grant",
        "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
        "error_codes": [700082],
    },
    "headers": {"Content-Type": "application/json"},
}


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium(django_db_setup):
    """Debian's Chromium driven by Playwright, one per test module.

    Playwright's sync API keeps an event loop running in this thread while it lives -- so only for one module, or
    later tests that call asyncio.run() would fail. The tests' ORM calls (and pytest-django's flushes) are still
    plain synchronous calls, so Django's async-context guard is lifted meanwhile, and restored after.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup --test (apt-get install -y chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="session")
def token_vault_standin():
    """The lab's stand-in of Auth0 Token Vault and the My Account API (its own HTTP server on loopback)."""
    from lab.token_vault_standin import TokenVaultStandIn

    server = TokenVaultStandIn().start()
    yield server
    server.stop()
