"""Revive as it is deployed: gunicorn (with the repository's gunicorn.conf.py) on loopback, DEBUG off.

``served`` starts one gunicorn per call on this session's test database, with static files collected into a
private ``REVIVE_VAR_DIR`` first (as ``scripts/setup`` does), and stops it at the end of the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.restate.conftest import free_port
from tests.runtimes.conftest import REPO_ROOT, spawn, stop_process, test_database_url  # noqa: F401


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def base_env(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE", "OTEL_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="revive_site.settings",
        DATABASE_URL=database_url,
        DATABASE_CONN_MAX_AGE="0",
        SECRET_KEY="revive-tests-only-not-a-secret",
        REVIVE_VAR_DIR=str(var_dir),
        DEBUG="false",
        PYTHONUNBUFFERED="1",
        REDIS_URL="",
    )
    env.update(extra)
    return env


def superuser(username: str, password: str):
    """A superuser gunicorn can sign in: hashed with the default hasher (the test settings use a fast one)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    user = get_user_model().objects.create_superuser(username, f"{username}@example.com", None)
    user.password = PBKDF2PasswordHasher().encode(password, PBKDF2PasswordHasher().salt())
    user.save(update_fields=["password"])
    return user


def collectstatic(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        timeout=300,
    )


@pytest.fixture
def served(test_database_url, tmp_path, transactional_db) -> Iterator:  # noqa: F811
    started: list[Served] = []

    def serve(*, workers: int = 1, collect: bool = True, **extra: str) -> Served:
        var_dir = tmp_path / f"var-{len(started)}"
        env = base_env(test_database_url, var_dir, **extra)
        if collect:
            collectstatic(env)
        port = free_port()
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        process = spawn(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            env=env,
            log_path=log_path,
        )
        server = Served(f"http://127.0.0.1:{port}", process, log_path, env)
        started.append(server)
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"gunicorn exited {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/admin/login/", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not answer within 120 s:\n{server.log()}")
            time.sleep(0.2)

    yield serve
    for server in started:
        stop_process(server.process)
