"""Credential custody: the embedded default keeps the grant encrypted at rest, out of the admin, and rotatable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib import admin

from reauth.custody import DatabaseCustody, Grant, get_custody
from reauth.models import CustodyGrant, ReconnectRequest

pytestmark = pytest.mark.django_db

ACCESS, REFRESH = "at-0123456789-not-a-real-token", "rt-9876543210-not-a-real-token"


def test_a_grant_round_trips_encrypted(make_connection):
    conn = make_connection()
    custody = get_custody()
    assert isinstance(custody, DatabaseCustody)
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    reference = custody.store(
        connection_id=conn.pk, generation=2, grant=Grant(access_token=ACCESS, refresh_token=REFRESH, expires_at=expires)
    )
    row = CustodyGrant.objects.get(connection=conn)
    assert reference == f"database:{row.pk}"
    assert ACCESS not in row.ciphertext and REFRESH not in row.ciphertext and row.ciphertext.startswith("gAAAA")
    loaded = custody.load(connection_id=conn.pk)
    assert (loaded.access_token, loaded.refresh_token, loaded.expires_at) == (ACCESS, REFRESH, expires)
    assert ACCESS not in repr(loaded) and REFRESH not in str(loaded) and ACCESS not in repr(row)


def test_only_the_newest_generation_is_kept(make_connection):
    conn = make_connection()
    custody = get_custody()
    custody.store(connection_id=conn.pk, generation=2, grant=Grant(access_token="a2"))
    custody.store(connection_id=conn.pk, generation=3, grant=Grant(access_token="a3"))
    assert list(CustodyGrant.objects.filter(connection=conn).values_list("generation", flat=True)) == [3]
    assert custody.load(connection_id=conn.pk).access_token == "a3"
    assert custody.load(connection_id=conn.pk, generation=2) is None


def test_the_key_rotates_with_secret_key_fallbacks(make_connection, settings):
    conn = make_connection()
    get_custody().store(connection_id=conn.pk, generation=2, grant=Grant(access_token=ACCESS))
    old = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "a-new-secret-key-for-this-test", [old]
    assert get_custody().load(connection_id=conn.pk).access_token == ACCESS
    settings.SECRET_KEY_FALLBACKS = []
    assert get_custody().load(connection_id=conn.pk) is None  # without the old key nothing decrypts


def test_custody_is_pluggable(settings, owner_case, issue_link):
    stored = []

    class Vault:
        name = "vault"

        def store(self, *, connection_id, generation, grant):
            stored.append((connection_id, generation, grant))
            return "vault:1"

        def load(self, *, connection_id, generation=None):
            return None

    import sys
    import types

    module = types.ModuleType("test_vault_module")
    module.Vault = Vault
    sys.modules["test_vault_module"] = module
    settings.REVIVE_CREDENTIAL_CUSTODY = "test_vault_module.Vault"
    assert get_custody().name == "vault"

    from audit.models import AuditEvent
    from reauth.identity import ProviderIdentity
    from reauth.services import reconnect_request_complete

    from .conftest import ADA_OID, CONTOSO_TID

    oc = owner_case()
    issue_link(oc)
    reconnect_request_complete(
        public_id=oc.request.public_id,
        presented=ProviderIdentity(subject=ADA_OID, tenant=CONTOSO_TID),
        grant=Grant(access_token=ACCESS),
        actor="owner:ada",
    )
    ((connection_id, generation, grant),) = stored
    assert (connection_id, generation, grant.access_token) == (oc.connection_id, 2, ACCESS)
    assert CustodyGrant.objects.count() == 0
    assert AuditEvent.objects.get(action="credential.custody_stored").after["reference"] == "vault:1"


def test_grants_stay_out_of_the_admin():
    assert CustodyGrant not in admin.site._registry
    request_admin = admin.site._registry[ReconnectRequest]
    shown = set(request_admin.fields) | set(request_admin.list_display)
    assert "token_hash" not in shown and "notify_claimed_until" not in shown
