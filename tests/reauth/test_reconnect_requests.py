"""Reconnect requests: created with the case, a ≥128-bit token stored only as its hash, expiring, revoked on resend
and when the case moves on, every state change audited."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import services as case_services
from cases.models import CaseState
from reauth import services
from reauth.errors import ReconnectLinkExpired, ReconnectLinkInvalid, ReconnectLinkRevoked
from reauth.models import ReconnectRequest

pytestmark = pytest.mark.django_db


def actions_for(req) -> list[str]:
    return list(
        AuditEvent.objects.filter(entity_type="reconnect_request", entity_id=str(req.public_id))
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_an_owner_case_creates_one_request_in_the_same_transaction(owner_case, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        oc = owner_case()
    req = oc.request
    assert req.state == ReconnectRequest.State.ACTIVE
    assert (req.case_id, req.connection_id, req.rejected_generation) == (oc.case.pk, oc.connection_id, 1)
    assert req.token_hash is None  # minted only when the link is sent
    assert actions_for(req) == ["reconnect.requested"]
    assert len(callbacks) == 1  # the notification, enqueued on commit

    again = services.reconnect_request_create(case=oc.case, actor="test")
    assert again.pk == req.pk
    assert ReconnectRequest.objects.filter(case=oc.case).count() == 1


def test_a_case_without_the_owner_gets_no_request(owner_case, make_connection, make_run):
    conn = make_connection()
    run = make_run()
    case_services.action_begin(
        run_id=run.pk, checkpoint_id="01", connection_id=conn.pk, action_key="a", generation=1, actor="t"
    )
    answer = case_services.action_fail(
        run_id=run.pk,
        action_key="a",
        generation=1,
        actor="t",
        provider_error={"status": 401, "body": {"error": "invalid_client"}},
    )
    assert answer.outcome == "parked"
    assert not ReconnectRequest.objects.filter(case__reference=answer.case_reference).exists()


def test_the_link_token_has_256_bits_and_only_its_hash_is_stored(owner_case, issue_link):
    oc = owner_case()
    link, token = issue_link(oc)
    req = oc.request
    assert token.startswith("rvr_") and len(token) == 4 + 43  # 32 random bytes, URL-safe base64
    assert req.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert not ReconnectRequest.objects.filter(token_hash=token).exists()
    assert token not in str(list(AuditEvent.objects.values_list("before", "after", "arguments")))
    assert services.reconnect_link_open(token=token).pk == req.pk


def test_the_link_expires_after_an_hour_by_default(owner_case, issue_link):
    oc = owner_case()
    before = timezone.now()
    issue_link(oc)
    req = oc.request
    assert timedelta(minutes=59) < req.expires_at - before <= timedelta(hours=1, seconds=5)


def test_the_expiry_is_a_setting(owner_case, issue_link, settings):
    settings.REVIVE_RECONNECT_TTL_SECONDS = 120
    oc = owner_case()
    issue_link(oc)
    req = oc.request
    assert req.expires_at - req.link_issued_at == timedelta(seconds=120)


def test_an_expired_link_is_refused_and_the_expiry_is_recorded(owner_case, issue_link):
    oc = owner_case()
    _, token = issue_link(oc)
    ReconnectRequest.objects.filter(pk=oc.request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ReconnectLinkExpired):
        services.reconnect_link_open(token=token)
    req = oc.request
    assert req.state == ReconnectRequest.State.EXPIRED
    assert actions_for(req)[-1] == "reconnect.expired"


@pytest.mark.parametrize(
    "token", ["", "rvr_", "rvr_short", "x" * 47, "rvr_" + "A" * 43, "rvr_" + "A" * 42 + "!", "../../etc/passwd"]
)
def test_a_tampered_or_unknown_token_is_invalid(owner_case, issue_link, token):
    oc = owner_case()
    issue_link(oc)
    with pytest.raises(ReconnectLinkInvalid):
        services.reconnect_link_open(token=token)


def test_a_token_with_one_character_changed_is_invalid(owner_case, issue_link):
    oc = owner_case()
    _, token = issue_link(oc)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(ReconnectLinkInvalid):
        services.reconnect_link_open(token=tampered)


def test_resend_revokes_the_old_link_and_is_idempotent_per_request(
    owner_case, issue_link, mailoutbox, django_capture_on_commit_callbacks
):
    oc = owner_case()
    _, old_token = issue_link(oc)
    old = oc.request
    with django_capture_on_commit_callbacks(execute=True):
        new = services.reconnect_request_resend(public_id=old.public_id, actor="operator:ops")
    assert new.pk != old.pk
    old.refresh_from_db()
    assert (
        old.state == ReconnectRequest.State.REVOKED and old.revoked_reason == "resent" and old.replaced_by_id == new.pk
    )
    with pytest.raises(ReconnectLinkRevoked):
        services.reconnect_link_open(token=old_token)
    assert len(mailoutbox) == 2  # the new link went out on commit
    with django_capture_on_commit_callbacks(execute=True):
        again = services.reconnect_request_resend(public_id=old.public_id, actor="operator:ops")
    assert again.pk == new.pk
    assert len(mailoutbox) == 2
    assert ReconnectRequest.objects.filter(case=oc.case, state="active").count() == 1
    assert actions_for(old) == [
        "reconnect.requested",
        "reconnect.link_issued",
        "reconnect.notified",
        "reconnect.revoked",
    ]


def test_the_link_is_revoked_when_the_case_moves_on(owner_case, issue_link):
    oc = owner_case()
    _, token = issue_link(oc)
    case_services.case_reauthorize(case_id=oc.case.pk, actor="operator:ops")  # handled another way
    with pytest.raises(ReconnectLinkRevoked):
        services.reconnect_link_open(token=token)
    req = oc.request
    assert (req.state, req.revoked_reason) == (ReconnectRequest.State.REVOKED, "case_moved_on")


def test_revoke_for_case_is_offered_to_case_transitions(owner_case, issue_link):
    from django.db import transaction

    oc = owner_case()
    _, token = issue_link(oc)
    with transaction.atomic():
        case = case_services.case_lock(oc.case.pk)
        case_services.case_transition(case, to=CaseState.ABANDONED, actor="operator:ops")
        assert (
            services.reconnect_requests_revoke_for_case(case=case, reason="case_abandoned", actor="operator:ops") == 1
        )
    assert oc.request.revoked_reason == "case_abandoned"
    with pytest.raises(ReconnectLinkRevoked):
        services.reconnect_link_open(token=token)


def test_the_sweep_settles_expired_links_and_links_whose_case_moved_on(owner_case, issue_link):
    expired, moved_on, fresh, unsent = owner_case(), owner_case(), owner_case(), owner_case()
    for oc in (expired, moved_on, fresh):
        issue_link(oc)
    ReconnectRequest.objects.filter(pk=expired.request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    case_services.case_reauthorize(case_id=moved_on.case.pk, actor="operator:ops")

    assert services.reconnect_requests_expire(actor="system:beat") == 2
    assert expired.request.state == ReconnectRequest.State.EXPIRED
    assert (moved_on.request.state, moved_on.request.revoked_reason) == (
        ReconnectRequest.State.REVOKED,
        "case_moved_on",
    )
    assert fresh.request.state == unsent.request.state == ReconnectRequest.State.ACTIVE
    assert services.reconnect_requests_expire(actor="system:beat") == 0


def test_the_beat_entry_point_reaches_the_sweep(owner_case, issue_link):
    from reauth.tasks import expire_reconnect_requests

    oc = owner_case()
    issue_link(oc)
    ReconnectRequest.objects.filter(pk=oc.request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_reconnect_requests.apply().get() == 1


def test_the_lab_command_parks_a_run_for_its_owner(mailoutbox, django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("reconnect_lab_case", stdout=out)
    req = ReconnectRequest.objects.get()
    assert (
        req.case.reference in out.getvalue()
        and req.connection.provider_tenant == "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01"
    )
    assert len(mailoutbox) == 1 and "/reconnect/l/rvr_" in mailoutbox[0].body
