"""The refresh claim (``cases.refresh``): one refresh per (connection, generation) at a time, decisions only."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from cases import refresh, services
from cases.models import RefreshClaim
from revive_site.errors import DomainError
from tests.cases.test_api import assert_error
from tests.cases.test_concurrency import run_concurrently

pytestmark = pytest.mark.django_db


def claim(conn, holder, *, generation=1, seen_round=0):
    return refresh.refresh_claim(
        connection_id=conn.pk, generation=generation, holder=holder, seen_round=seen_round, actor=f"worker:{holder}"
    )


def release(conn, holder, round, outcome="refreshed", *, generation=1):
    return refresh.refresh_release(
        connection_id=conn.pk,
        generation=generation,
        round=round,
        holder=holder,
        outcome=outcome,
        actor=f"worker:{holder}",
    )


def test_the_first_claimant_refreshes_and_the_others_wait(make_connection):
    conn = make_connection()

    first, second, again = claim(conn, "w1"), claim(conn, "w2"), claim(conn, "w1")

    assert (first.decision, first.round, first.holder) == ("refresh", 1, "w1")
    assert (second.decision, second.round, second.holder) == ("wait", 1, "w1")
    assert 0 < second.retry_after <= 0.2
    assert again.decision == "refresh"  # the holder asking again keeps its claim


def test_after_the_release_waiters_reload_and_later_failures_refresh_again(make_connection):
    conn = make_connection()
    claim(conn, "w1")
    claim(conn, "w2")

    released = release(conn, "w1", 1)
    waiter = claim(conn, "w2")  # it saw the credential of round 0
    rejected_again = claim(conn, "w2", seen_round=1)  # the reloaded credential (round 1) was rejected too

    assert released.decision == "released"
    assert (waiter.decision, waiter.round) == ("reload", 1)
    assert (rejected_again.decision, rejected_again.round, rejected_again.holder) == ("refresh", 2, "w2")


def test_a_failed_refresh_lets_the_next_claimant_try(make_connection):
    conn = make_connection()
    claim(conn, "w1")
    release(conn, "w1", 1, "failed")

    assert (claim(conn, "w2").decision, claim(conn, "w2").round) == ("refresh", 2)


def test_an_expired_holder_is_taken_over_and_can_no_longer_release(make_connection):
    conn = make_connection()
    claim(conn, "w1")
    RefreshClaim.objects.filter(connection=conn).update(held_until=timezone.now() - timedelta(seconds=1))

    taken = claim(conn, "w2")

    assert (taken.decision, taken.round, taken.holder) == ("refresh", 2, "w2")
    with pytest.raises(DomainError) as refused:
        release(conn, "w1", 1)
    assert refused.value.code == "REFRESH_CLAIM_NOT_HELD" and refused.value.status == 409
    event = AuditEvent.objects.filter(action="refresh.claimed", connection_id=conn.pk).order_by("-id").first()
    assert event.arguments["taken_over"] is True and event.before["holder"] == "w1"


def test_a_repeated_release_answers_the_same(make_connection):
    conn = make_connection()
    claim(conn, "w1")

    assert release(conn, "w1", 1).decision == release(conn, "w1", 1).decision == "released"
    assert AuditEvent.objects.filter(action="refresh.refreshed", connection_id=conn.pk).count() == 1


def test_a_superseded_generation_is_fenced_and_an_unissued_one_refused(make_connection):
    conn = make_connection()
    services.lease_advance(connection_id=conn.pk, from_generation=1, actor="t")

    fenced = claim(conn, "w1", generation=1)

    assert (fenced.decision, fenced.current_generation) == ("fenced", 2)
    with pytest.raises(DomainError) as unknown:
        claim(conn, "w1", generation=3)
    assert unknown.value.code == "GENERATION_UNKNOWN"


def test_each_generation_has_its_own_claim(make_connection):
    conn = make_connection()
    claim(conn, "w1")
    services.lease_advance(connection_id=conn.pk, from_generation=1, actor="t")

    assert (claim(conn, "w2", generation=2).decision, claim(conn, "w2", generation=2).round) == ("refresh", 1)


def test_the_audit_holds_no_token_and_no_waiting(make_connection):
    conn = make_connection()
    claim(conn, "w1")
    for _ in range(5):
        claim(conn, "w2")
    release(conn, "w1", 1)

    actions = list(
        AuditEvent.objects.filter(connection_id=conn.pk, action__startswith="refresh.").values_list("action", flat=True)
    )
    assert actions == ["refresh.claimed", "refresh.refreshed"]


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_claims_give_one_refresh(make_connection):
    conn = make_connection()

    results, errors = run_concurrently([lambda i=i: claim(conn, f"w{i}").decision for i in range(20)])

    assert errors == [None] * 20
    assert Counter(results) == {"refresh": 1, "wait": 19}
    assert RefreshClaim.objects.get(connection=conn).round == 1


# --- over HTTP ----------------------------------------------------------------------------


def test_claim_and_release_over_the_worker_api(api, make_connection):
    conn = make_connection()

    got = api.post(f"/connections/{conn.pk}/refresh-claims", {"generation": 1, "holder": "host:1:ab"})
    done = api.post(
        f"/connections/{conn.pk}/refresh-claims/release",
        {"generation": 1, "holder": "host:1:ab", "round": 1, "outcome": "refreshed"},
    )

    assert got.status_code == 200 and got.json()["decision"] == "refresh"
    assert set(got.json()) == {
        "decision",
        "connection_id",
        "generation",
        "round",
        "holder",
        "held_until",
        "retry_after",
        "current_generation",
    }  # a decision, never a credential
    assert done.status_code == 200 and done.json()["decision"] == "released"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"generation": 1},
        {"generation": 0, "holder": "w"},
        {"generation": 1, "holder": ""},
        {"generation": 1, "holder": "has space"},
        {"generation": 1, "holder": "w", "seen_round": -1},
        {"generation": "one", "holder": "w"},
    ],
)
def test_bad_claims_are_4xx_with_a_stable_code(api, make_connection, body):
    conn = make_connection()

    assert_error(api.post(f"/connections/{conn.pk}/refresh-claims", body), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "body",
    [
        {"generation": 1, "holder": "w", "round": 1},
        {"generation": 1, "holder": "w", "round": 0, "outcome": "refreshed"},
        {"generation": 1, "holder": "w", "round": 1, "outcome": "maybe"},
    ],
)
def test_bad_releases_are_4xx_with_a_stable_code(api, make_connection, body):
    conn = make_connection()

    assert_error(api.post(f"/connections/{conn.pk}/refresh-claims/release", body), 422, "VALIDATION_ERROR")


def test_claim_errors_over_http(api, make_connection):
    conn = make_connection()

    assert_error(
        api.post("/connections/nope/refresh-claims", {"generation": 1, "holder": "w"}), 404, "CONNECTION_NOT_FOUND"
    )
    assert_error(
        api.post(f"/connections/{conn.pk}/refresh-claims", {"generation": 5, "holder": "w"}), 409, "GENERATION_UNKNOWN"
    )
    assert_error(
        api.post(
            f"/connections/{conn.pk}/refresh-claims/release",
            {"generation": 1, "holder": "w", "round": 1, "outcome": "refreshed"},
        ),
        409,
        "REFRESH_CLAIM_NOT_HELD",
    )
    assert_error(
        api.post(f"/connections/{conn.pk}/refresh-claims", {"generation": 1, "holder": "w"}, key=None),
        401,
        "AUTHENTICATION_REQUIRED",
    )
