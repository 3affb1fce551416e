"""Production settings: ``check --deploy`` is clean, TLS at a proxy is one setting, the lab cannot sign anyone in."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def manage(*args: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "REVIVE_VAR_DIR": str(tmp_path / "var"),
        "REVIVE_PRODUCTION": "1",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "revive.example.com",
        **extra,
    }
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_deploy_is_clean_in_production(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


SHOW = "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"


def test_production_redirects_to_https_and_sends_hsts(tmp_path):
    result = manage("shell", "--no-imports", "-c", SHOW, tmp_path=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "True 31536000 None", result.stderr


def test_tls_terminated_at_a_proxy_is_one_setting(tmp_path):
    result = manage("shell", "--no-imports", "-c", SHOW, tmp_path=tmp_path, REVIVE_TLS_PROXY_HEADER="X-Forwarded-Proto")
    assert result.stdout.strip().splitlines()[-1] == "True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https')", result.stderr


def test_the_lab_sign_in_app_cannot_be_enabled_in_production(tmp_path):
    result = manage("check", tmp_path=tmp_path, REVIVE_LAB_IDP_URL="http://127.0.0.1:9", REVIVE_LAB_IDP_CLIENT_ID="lab")
    assert result.returncode != 0
    assert "REVIVE_LAB_IDP_URL is set with REVIVE_PRODUCTION=1" in result.stderr


@pytest.mark.django_db
def test_production_redirects_plain_http_and_trusts_the_proxy_header(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/admin/login/").status_code == 301
    resp = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    assert resp.status_code == 200


LAB_PARTS = (
    "from django.apps import apps; from django.test import Client; "
    "from django.core.management import get_commands; "
    "apps_ = [(c.label, c.name) for c in apps.get_app_configs()]; commands = get_commands(); "
    "print(any(name == 'lab' for _, name in apps_), any(label == 'idp' or name == 'lab.idp' for label, name in apps_), "
    "'recovery_lab' in commands, 'reconnect_lab_case' in commands, 'idp_seed' in commands, "
    "Client(SERVER_NAME='revive.example.com').get('/lab/', secure=True).status_code)"
)


def test_the_lab_is_not_part_of_the_product_in_production(tmp_path):
    """Neither the lab nor its identity provider is installed (no lab command, no lab permission, no IdP app or
    command), and /lab/ is not routed: a 404 for everyone."""
    result = manage("shell", "--no-imports", "-c", LAB_PARTS, tmp_path=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "False False False False False 404", result.stdout + result.stderr


def test_the_lab_is_installed_outside_production_and_its_identity_provider_never_in_revive(tmp_path):
    """The same readout without REVIVE_PRODUCTION: the lab and its commands are there and /lab/ asks for a staff
    sign-in; the identity provider is still absent -- it runs as a process of its own (``lab.idp.settings``)."""
    result = manage("shell", "--no-imports", "-c", LAB_PARTS, tmp_path=tmp_path, REVIVE_PRODUCTION="0")
    assert result.stdout.strip().splitlines()[-1] == "True False True True False 302", result.stdout + result.stderr
