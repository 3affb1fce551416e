"""API keys (shown once, stored hashed) from the command line and the admin; the reaper command."""

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from cases import services
from cases.models import Action, ApiKey

pytestmark = pytest.mark.django_db
KEY = re.compile(r"rvk_[0-9a-f]{8}_[A-Za-z0-9_-]{40,}")


def test_command_prints_the_key_once_and_stores_only_its_hash(client):
    out = StringIO()
    call_command("revive_api_key", "fleet-a", stdout=out)
    raw = KEY.search(out.getvalue()).group(0)
    key = ApiKey.objects.get(name="fleet-a")
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in str(list(ApiKey.objects.values())) + str(list(AuditEvent.objects.values()))
    assert services.api_key_authenticate(raw) == key
    with pytest.raises(CommandError, match="already exists"):
        call_command("revive_api_key", "fleet-a", stdout=StringIO())


def test_admin_creates_a_key_and_shows_it_once(client):
    User.objects.create_superuser("op", "op@example.com", "pw")
    client.login(username="op", password="pw")
    resp = client.post(
        "/admin/cases/apikey/add/", {"name": "fleet-b", "namespace": "default", "role": "worker"}, follow=True
    )
    assert resp.status_code == 200
    raw = KEY.search(resp.content.decode()).group(0)
    key = ApiKey.objects.get(name="fleet-b")
    assert services.api_key_authenticate(raw) == key
    page = client.get(f"/admin/cases/apikey/{key.pk}/change/").content.decode()
    assert raw not in page and key.key_hash not in page
    assert AuditEvent.objects.filter(action="api_key.created", actor="operator:op").exists()


def test_admin_forms_keep_csrf_on(client):
    User.objects.create_superuser("op", "op@example.com", "pw")
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.login(username="op", password="pw")
    resp = strict.post("/admin/cases/apikey/add/", {"name": "fleet-c", "role": "worker"})
    assert resp.status_code == 403
    assert not ApiKey.objects.filter(name="fleet-c").exists()


def test_reap_command_marks_expired_executing_actions_ambiguous(make_run, make_connection):
    run, conn = make_run(), make_connection()
    services.action_begin(
        run_id=run.pk, checkpoint_id="01", connection_id=conn.pk, action_key="a", generation=1, actor="w"
    )
    Action.objects.update(lock_expires_at=timezone.now() - timedelta(seconds=5))
    out = StringIO()
    call_command("reap_stale_actions", stdout=out)
    assert "1 action(s) marked ambiguous" in out.getvalue()
    assert Action.objects.get().state == "ambiguous"


def test_connection_command_registers_generation_one():
    out = StringIO()
    call_command(
        "revive_connection",
        "conn_microsoft_ops",
        "--provider",
        "entra",
        "--owner-email",
        "o@contoso.com",
        "--subject",
        "00000000-0000-0000-0000-0000000000a1",
        "--tenant",
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        stdout=out,
    )
    assert "generation 1" in out.getvalue()
    lease = services.lease_acquire(connection_id="conn_microsoft_ops")
    assert (lease.generation, lease.usable) == (1, True)


def test_a_key_is_read_once_per_window_and_a_key_revoked_elsewhere_is_refused_after_it(api, settings, make_connection):
    """Authentication costs no round trip while the key is cached; revocation by another process takes effect
    within REVIVE_API_KEY_CACHE_SECONDS."""
    import time

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.REVIVE_API_KEY_CACHE_SECONDS = 1.0
    conn = make_connection()
    assert api.post(f"/connections/{conn.pk}/lease").status_code == 200  # reads the key, caches it
    with CaptureQueriesContext(connection) as queries:
        assert api.post(f"/connections/{conn.pk}/lease").status_code == 200
    assert not [q for q in queries if "cases_apikey" in q["sql"]]
    # Revoked by another process (the admin of another web worker): this process has not heard of it.
    ApiKey.objects.update(revoked_at=timezone.now())
    time.sleep(1.2)  # the window is over
    resp = api.post(f"/connections/{conn.pk}/lease")
    assert (resp.status_code, resp.json()["code"]) == (401, "AUTHENTICATION_REQUIRED")


def test_the_process_that_revokes_a_key_refuses_it_at_once(api, settings, make_connection):
    settings.REVIVE_API_KEY_CACHE_SECONDS = 3600.0
    conn = make_connection()
    assert api.post(f"/connections/{conn.pk}/lease").status_code == 200
    services.api_key_revoke(key_id=ApiKey.objects.get().pk, actor="operator:op")
    assert api.post(f"/connections/{conn.pk}/lease").status_code == 401


def test_an_access_change_applies_at_once_in_the_process_that_makes_it(api, settings, make_connection):
    """The cached key carries its namespace and role: moving it to another namespace through the admin's service
    must not leave this process answering with the old namespace for the cache's window."""
    from cases.models import Namespace
    from console.services import api_key_access_change

    settings.REVIVE_API_KEY_CACHE_SECONDS = 3600.0
    conn = make_connection()
    assert api.post(f"/connections/{conn.pk}/lease").status_code == 200  # cached, in the default namespace
    Namespace.objects.create(name="team-a")
    api_key_access_change(
        key_id=ApiKey.objects.get().pk, actor="operator:op", reason="moved to team A", namespace="team-a"
    )
    resp = api.post(f"/connections/{conn.pk}/lease")
    assert (resp.status_code, resp.json()["code"]) == (404, "CONNECTION_NOT_FOUND")
