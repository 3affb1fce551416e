"""Racing callbacks on PostgreSQL with real threads: one request is consumed exactly once, and refusals count exactly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from audit.models import AuditEvent
from cases.models import Connection, CredentialGeneration
from reauth import services
from reauth.custody import Grant
from reauth.errors import ReconnectLinkLocked, ReconnectLinkUsed
from reauth.identity import ProviderIdentity
from reauth.models import CustodyGrant, ReconnectRequest

from .conftest import ADA_OID, CONTOSO_TID, MALLORY_OID

pytestmark = pytest.mark.django_db(transaction=True)
RACERS = 8


def race(fn, n=RACERS):
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(timeout=30)
            return fn(i)
        except Exception as exc:  # noqa: BLE001 -- the outcome is what we assert on
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_racing_callbacks_consume_the_request_exactly_once(owner_case, mailoutbox):
    oc = owner_case()  # the link is e-mailed on commit
    public_id = oc.request.public_id
    right = ProviderIdentity(subject=ADA_OID, tenant=CONTOSO_TID, label="ada@contoso.example")

    outcomes = race(
        lambda i: services.reconnect_request_complete(
            public_id=public_id,
            presented=right,
            grant=Grant(access_token=f"at-race-{i}", refresh_token=f"rt-race-{i}"),
            actor=f"owner:racer{i}",
        )
    )

    won = [o for o in outcomes if isinstance(o, services.Completion) and o.consumed]
    lost = [o for o in outcomes if isinstance(o, ReconnectLinkUsed)]
    assert len(won) == 1 and len(lost) == RACERS - 1, outcomes
    assert won[0].generation == 2
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 2
    assert CredentialGeneration.objects.filter(connection_id=oc.connection_id).count() == 2
    assert AuditEvent.objects.filter(action="lease.advanced", connection_id=oc.connection_id).count() == 1
    assert AuditEvent.objects.filter(action="reconnect.consumed", entity_id=str(public_id)).count() == 1
    assert CustodyGrant.objects.filter(connection_id=oc.connection_id).count() == 1
    assert ReconnectRequest.objects.get(public_id=public_id).state == ReconnectRequest.State.CONSUMED


def test_racing_refusals_are_counted_exactly_and_lock_at_five(owner_case, mailoutbox):
    oc = owner_case()
    public_id = oc.request.public_id
    wrong = ProviderIdentity(subject=MALLORY_OID, tenant=CONTOSO_TID, label="mallory@contoso.example")

    outcomes = race(
        lambda i: services.reconnect_request_complete(
            public_id=public_id, presented=wrong, grant=Grant(access_token=f"at-{i}"), actor="owner:mallory"
        )
    )

    refused = [o for o in outcomes if isinstance(o, services.Completion) and not o.consumed]
    locked_out = [o for o in outcomes if isinstance(o, ReconnectLinkLocked)]
    assert len(refused) == 5 and len(locked_out) == RACERS - 5, outcomes
    assert sorted(o.refusals for o in refused) == [1, 2, 3, 4, 5]
    assert [o.locked for o in sorted(refused, key=lambda o: o.refusals)] == [False] * 4 + [True]
    req = ReconnectRequest.objects.get(public_id=public_id)
    assert (req.state, req.refusals) == (ReconnectRequest.State.LOCKED, 5)
    assert AuditEvent.objects.filter(action="reconnect.identity_mismatch", entity_id=str(public_id)).count() == 5
    assert Connection.objects.get(pk=oc.connection_id).current_generation == 1
    assert CustodyGrant.objects.count() == 0


def test_a_reconnect_racing_a_resend_never_uses_the_revoked_link(owner_case, mailoutbox):
    oc = owner_case()
    public_id = oc.request.public_id
    right = ProviderIdentity(subject=ADA_OID, tenant=CONTOSO_TID)

    def either(i):
        if i % 2:
            return services.reconnect_request_resend(public_id=public_id, actor="operator:ops")
        return services.reconnect_request_complete(
            public_id=public_id, presented=right, grant=Grant(access_token="at"), actor="owner:ada"
        )

    outcomes = race(either, n=4)
    consumed = [o for o in outcomes if isinstance(o, services.Completion) and o.consumed]
    generation = Connection.objects.get(pk=oc.connection_id).current_generation
    assert generation == 1 + len(consumed) and len(consumed) <= 1
    old = ReconnectRequest.objects.get(public_id=public_id)
    assert old.state in (ReconnectRequest.State.CONSUMED, ReconnectRequest.State.REVOKED)
    assert ReconnectRequest.objects.filter(case=oc.case, state="active").count() == (0 if consumed else 1)
