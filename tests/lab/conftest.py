"""Fixtures of the lab tests on PostgreSQL and Redis: the lab's world around pytest-django's live server and a real
Celery worker (``tests/runtimes/conftest.py`` starts it), the lab identity provider as a process, the provider stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cases.runtimes import reset_adapters
from lab import briefing
from lab.idp.driver import LabIdp
from lab.provider_standin import ProviderStandIn
from lab.token_vault_standin import TokenVaultStandIn
from lab.world import LabWorld, socialaccount_providers_for, token_vault_settings
from reauth.provider_settings import LAB_PROVIDER_ID
from revive_site.celery import app as celery_app
from tests.runtimes.conftest import (  # noqa: F401  (the shared process fixtures)
    celery_manager,
    raw_worker_key,
    revive_http,
    test_database_url,
    worker_env_base,
    world_dir,
)
from tests.runtimes.support.config import GRAPHS


@pytest.fixture(scope="session")
def lab_standin() -> Iterator[ProviderStandIn]:
    standin = ProviderStandIn(provider="entra").start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def lab_vault() -> Iterator[TokenVaultStandIn]:
    vault = TokenVaultStandIn().start()
    yield vault
    vault.stop()


@pytest.fixture(scope="session")
def lab_idp_process(live_server, tmp_path_factory) -> Iterator[LabIdp]:
    idp = LabIdp.start(
        var_dir=tmp_path_factory.mktemp("lab-idp"),
        redirect_uris=[f"{live_server.url}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/"],
    )
    yield idp
    idp.stop()


@pytest.fixture(scope="session")
def lab_mailbox(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lab-mail")


@pytest.fixture
def lab_world(
    revive_http,
    raw_worker_key,
    lab_idp_process,
    lab_standin,
    lab_vault,
    lab_mailbox,
    test_database_url,
    world_dir,
    celery_manager,
    settings,
    tmp_path,
    monkeypatch,
) -> Iterator[LabWorld]:
    """The lab around the live server; resumes run in a real Celery worker on Redis (eager mode off)."""
    idp = lab_idp_process
    settings.REVIVE_LANGGRAPH_GRAPHS = {**GRAPHS, briefing.GRAPH_NAME: "lab.briefing:briefing"}
    settings.REVIVE_RECONCILERS = {}  # as in tests/lab/worker_settings.py
    settings.PUBLIC_BASE_URL = revive_http
    settings.SOCIALACCOUNT_PROVIDERS = socialaccount_providers_for(idp)
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = str(lab_mailbox)
    settings.REVIVE_AUTH0_TOKEN_VAULT = token_vault_settings(lab_vault)
    monkeypatch.setattr(briefing, "MAIL_TIMEOUT", 3.0)  # generous on a busy machine; the timeout fault waits longer
    processes = {
        "DJANGO_SETTINGS_MODULE": "tests.lab.worker_settings",
        "REVIVE_LAB_MAILBOX": str(lab_mailbox),
        "REVIVE_PUBLIC_URL": revive_http,
        "REVIVE_LAB_URL": revive_http,
        "REVIVE_LAB_API_KEY": raw_worker_key,
        "REVIVE_LAB_IDP_CLIENT_ID": idp.client_id,
        "REVIVE_LAB_IDP_CLIENT_SECRET": idp.client_secret,
        "REVIVE_LAB_MAIL_TIMEOUT": "3.0",
        "REVIVE_LAB_VAULT_CLIENT_ID": lab_vault.client_id,
        "REVIVE_LAB_VAULT_CLIENT_SECRET": lab_vault.client_secret,
    }
    celery_manager.ensure(**processes)
    for name, value in processes.items():
        if name != "DJANGO_SETTINGS_MODULE":
            monkeypatch.setenv(name, value)
    world = LabWorld(
        revive_url=revive_http,
        api_key=raw_worker_key,
        idp=idp,
        standin=lab_standin,
        vault=lab_vault,
        mailbox=lab_mailbox,
        var_dir=tmp_path,
        worker_env={
            **celery_manager.base_env,
            **processes,
            "DATABASE_URL": test_database_url,
            "REVIVE_VAR_DIR": str(world_dir / "var"),
        },
    )
    world.export_env()
    reset_adapters()
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        yield world
    finally:
        celery_app.conf.task_always_eager = eager
        reset_adapters()
