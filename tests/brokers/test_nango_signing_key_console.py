"""A namespace's Nango webhook signing key set in the console: write-only, encrypted at rest, audited without the key,
and checked before the environment's keys."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client

from audit.models import AuditEvent
from cases import services as case_services
from cases.namespaces import namespace_ensure, qualify
from console.services import namespace_operators_set
from reauth.brokers.services import nango_signing_key, nango_signing_key_clear, nango_signing_key_set
from reauth.custody import secret_open
from reauth.models import NangoSigningKey

from .conftest import SIGNING_KEY, TRANSIENT, auth_event

pytestmark = pytest.mark.django_db

ADD = "/admin/reauth/nangosigningkey/add/"
LIST = "/admin/reauth/nangosigningkey/"
ENV_KEY = "acme-key-from-the-environment"
CONSOLE_KEY = "acme-console-key-7f3e9a51c2d84b60"
NEW_KEY = "acme-console-key-replacement-44d1"
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def change_url(namespace: str) -> str:
    return f"{LIST}{namespace}/change/"


class Console:
    """A signed-in console user whose client enforces CSRF, posting forms as a browser does: token from the page."""

    def __init__(self, user: User) -> None:
        self.http = Client(enforce_csrf_checks=True)
        self.http.force_login(user)

    def get(self, url: str):
        return self.http.get(url)

    def submit(self, url: str, data: dict):
        page = self.http.get(url)
        assert page.status_code == 200, page.status_code
        token = _CSRF.search(page.content.decode()).group(1)
        return self.http.post(url, {**data, "csrfmiddlewaretoken": token})


@pytest.fixture
def acme(nango_settings):
    """Namespace ``acme`` with a Nango connection, whose environment key is ``ENV_KEY``."""
    namespace_ensure(name="acme", actor="test")
    nango_settings.REVIVE_NANGO_WEBHOOK_SIGNING_KEYS = {"acme": ENV_KEY}
    return case_services.connection_create(
        connection_id=qualify("acme", "mailbox"),
        namespace="acme",
        provider="nango",
        upstream_provider="oidc",
        owner_email="ada@acme.example",
        provider_subject="1",
        provider_issuer="http://127.0.0.1:9/idp",
        broker_integration="microsoft-lab",
        broker_connection="acme-nango-1",
        actor="test",
    )


@pytest.fixture
def console(admin_user):
    return Console(admin_user)


def signed_by(deliver, conn, key: str) -> int:
    return deliver(auth_event(conn, "refresh", success=False, error=TRANSIENT), namespace="acme", key=key).status_code


def key_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="namespace.nango_signing_key_changed").order_by("pk"))


def nothing_of(keys: tuple[str, ...], text: str) -> bool:
    return not any(key in text for key in keys)


def test_a_key_set_in_the_console_signs_the_namespaces_webhooks_until_it_is_cleared(acme, console, deliver, caplog):
    caplog.set_level(logging.DEBUG)
    assert signed_by(deliver, acme, ENV_KEY) == 200

    # CSRF stays on: a post without the page's token is refused and sets nothing
    assert console.http.post(ADD, {"namespace": "acme", "signing_key": CONSOLE_KEY}).status_code == 403
    assert not NangoSigningKey.objects.exists()

    added = console.submit(ADD, {"namespace": "acme", "signing_key": CONSOLE_KEY})
    assert added.status_code == 302, added.content.decode()[:2000]
    stored = NangoSigningKey.objects.get(namespace_id="acme")
    assert CONSOLE_KEY not in stored.ciphertext and secret_open(stored.ciphertext) == CONSOLE_KEY
    assert signed_by(deliver, acme, CONSOLE_KEY) == 200
    assert signed_by(deliver, acme, ENV_KEY) == 401
    assert signed_by(deliver, acme, SIGNING_KEY) == 401

    pages = "".join(console.get(url).content.decode() for url in (LIST, change_url("acme"), f"{LIST}acme/history/"))
    assert "Set on " in pages and nothing_of((CONSOLE_KEY, stored.ciphertext), pages)

    replaced = console.submit(change_url("acme"), {"signing_key": NEW_KEY})
    assert replaced.status_code == 302, replaced.content.decode()[:2000]
    assert signed_by(deliver, acme, NEW_KEY) == 200
    assert signed_by(deliver, acme, CONSOLE_KEY) == 401

    cleared = console.submit(change_url("acme"), {"clear": "on"})
    assert cleared.status_code == 302, cleared.content.decode()[:2000]
    assert signed_by(deliver, acme, NEW_KEY) == 401
    assert signed_by(deliver, acme, ENV_KEY) == 200  # back to the environment's key
    assert "Not set (cleared on" in console.get(change_url("acme")).content.decode()

    events = key_events()
    assert [(e.actor, e.entity_type, e.entity_id, e.arguments) for e in events] == [
        ("operator:admin", "namespace", "acme", {"operation": "set"}),
        ("operator:admin", "namespace", "acme", {"operation": "replaced"}),
        ("operator:admin", "namespace", "acme", {"operation": "cleared"}),
    ]
    every_event = json.dumps(list(AuditEvent.objects.values()), default=str)
    admin_log = json.dumps(list(LogEntry.objects.values()), default=str)
    logs = caplog.text + json.dumps([str(r.args) for r in caplog.records])
    for text in (every_event, admin_log, logs):
        assert nothing_of((CONSOLE_KEY, NEW_KEY), text)


@pytest.mark.parametrize(
    "data, error",
    [
        ({"signing_key": NEW_KEY, "clear": "on"}, "not both"),
        ({}, "Type a new key to replace the stored one, or clear it."),
    ],
)
def test_a_refused_change_shows_no_key_back_and_changes_nothing(acme, console, data, error):
    nango_signing_key_set(namespace="acme", key=CONSOLE_KEY, actor="test")
    before = len(key_events())
    refused = console.submit(change_url("acme"), data)
    page = refused.content.decode()
    assert refused.status_code == 200 and error in page
    assert nothing_of((CONSOLE_KEY, NEW_KEY), page)
    assert len(key_events()) == before and nango_signing_key("acme") == CONSOLE_KEY


def test_the_add_form_needs_a_key_and_offers_only_namespaces_without_one(acme, console):
    namespace_ensure(name="beta", actor="test")
    nango_signing_key_clear(namespace="acme", actor="test")  # nothing to clear: no row, no event
    assert not NangoSigningKey.objects.exists() and key_events() == []
    refused = console.submit(ADD, {"namespace": "beta", "signing_key": "   "})
    assert refused.status_code == 200 and "Type the namespace&#x27;s signing key." in refused.content.decode()
    nango_signing_key_set(namespace="acme", key=CONSOLE_KEY, actor="test")
    offered = console.get(ADD).content.decode()
    assert 'value="beta"' in offered and 'value="acme"' not in offered


def test_setting_the_same_key_again_and_clearing_twice_record_one_event_each(acme):
    nango_signing_key_set(namespace="acme", key=CONSOLE_KEY, actor="test")
    nango_signing_key_set(namespace="acme", key=f"  {CONSOLE_KEY} ", actor="test")
    nango_signing_key_clear(namespace="acme", actor="test")
    nango_signing_key_clear(namespace="acme", actor="test")
    assert [e.arguments["operation"] for e in key_events()] == ["set", "cleared"]


@pytest.mark.parametrize(
    "namespace, key, code",
    [
        ("acme", "", "VALIDATION_ERROR"),
        ("acme", "x" * 501, "VALIDATION_ERROR"),
        ("nowhere", CONSOLE_KEY, "NOT_FOUND"),
    ],
)
def test_bad_input_to_the_service_is_a_clear_error(acme, namespace, key, code):
    from revive_site.errors import DomainError

    with pytest.raises(DomainError) as refused:
        nango_signing_key_set(namespace=namespace, key=key, actor="test")
    assert refused.value.code == code and CONSOLE_KEY not in str(refused.value.as_body())
    assert not NangoSigningKey.objects.exists()


def test_the_key_needs_its_permission_and_stays_inside_the_operators_namespaces(acme, django_user_model):
    namespace_ensure(name="beta", actor="test")
    nango_signing_key_set(namespace="beta", key="beta-key", actor="test")
    staff = django_user_model.objects.create_user("staff", password="pw-staff-1", is_staff=True)
    without = Console(staff)
    assert without.get(ADD).status_code == 403
    assert without.get(change_url("beta")).status_code == 403
    assert without.http.post(change_url("beta"), {"clear": "on"}).status_code == 403
    assert nango_signing_key("beta") == "beta-key"

    staff.user_permissions.add(Permission.objects.get(codename="change_nangosigningkey"))
    namespace_operators_set(name="acme", users=[staff], actor="test")
    keeper = Console(User.objects.get(pk=staff.pk))
    assert keeper.get(change_url("beta")).status_code == 302  # another namespace's key "does not exist"
    offered = keeper.get(ADD).content.decode()
    assert 'value="acme"' in offered and 'value="beta"' not in offered
    assert keeper.submit(ADD, {"namespace": "acme", "signing_key": CONSOLE_KEY}).status_code == 302
    assert key_events()[-1].actor == "operator:staff"


def test_the_environment_key_without_a_namespace_is_for_default_only(acme, deliver, nango_connection):
    namespace_ensure(name="beta", actor="test")
    assert nango_signing_key("beta") == "" and nango_signing_key("nowhere") is None
    assert nango_signing_key("default") == SIGNING_KEY
    conn = nango_connection()
    event = auth_event(conn, "refresh", success=False, error=TRANSIENT)
    refused = deliver(event, namespace="beta")
    assert refused.status_code == 401 and refused.json()["data"]["reason"] == "no_signing_key"
    nango_signing_key_set(namespace="default", key=CONSOLE_KEY, actor="test")  # a console key wins for default too
    assert deliver(event).status_code == 401
    assert deliver(event, key=CONSOLE_KEY).status_code == 200


def test_a_stored_key_the_secret_key_cannot_open_refuses_every_delivery(acme, console, deliver, settings, caplog):
    nango_signing_key_set(namespace="acme", key=CONSOLE_KEY, actor="test")
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    console.http.force_login(User.objects.get(username="admin"))  # the session's hash follows SECRET_KEY
    assert signed_by(deliver, acme, CONSOLE_KEY) == 401
    assert signed_by(deliver, acme, ENV_KEY) == 401  # not a silent fall back to the key it replaced
    assert "cannot be decrypted" in caplog.text and CONSOLE_KEY not in caplog.text
    assert "cannot decrypt it" in console.get(change_url("acme")).content.decode()
    settings.SECRET_KEY_FALLBACKS = [old_secret]
    assert signed_by(deliver, acme, CONSOLE_KEY) == 200
