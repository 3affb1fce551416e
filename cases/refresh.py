"""Single-flight refresh: one refresh per (connection, generation) at a time, whoever asks.

When an access token expires, every worker using it sees ``refresh`` at once. With rotating refresh tokens,
twenty workers refreshing on their own is fatal: the first rotation invalidates the refresh token the other
nineteen present, and providers treat that as token theft (Auth0 revokes the whole family on "Reused rotating
refresh token detected"; Entra and others invalidate the older token). So a worker first claims the refresh:

* ``refresh``: you hold round ``round`` until ``held_until``: refresh at the provider, put the new grant where
  the credential lives (Revive's own custody for a direct OAuth connection, the broker or vault otherwise), then
  release the round with ``refreshed`` or ``failed``;
* ``wait``: ``holder`` is refreshing round ``round``: ask again after ``retry_after`` seconds;
* ``reload``: round ``round`` was refreshed after the credential you saw: read the credential again (re-lease)
  and retry; remember ``round`` as the round of what you read;
* ``fenced``: the generation was superseded by a reconnect: reacquire the lease.

Nothing here sees a token (contract invariant 8): the claim is a decision, a holder and a round number. A holder
that dies is replaced once its claim expires (``REVIVE_REFRESH_CLAIM_SECONDS``); a failed refresh lets the next
claimant try, so each run reports the provider's answer itself (a dead grant parks every run, as it must).

Concurrency: the connection row is locked ``FOR SHARE`` (the generation cannot move meanwhile), then the claim
row ``FOR UPDATE``; the row is created once per generation by an insert that ignores conflicts, so concurrent
first claimants queue on the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record

from .errors import RefreshClaimNotHeld
from .models import RefreshClaim
from .services.common import _check_generation, _lock_connection


class Decision:
    REFRESH = "refresh"
    WAIT = "wait"
    RELOAD = "reload"
    FENCED = "fenced"
    RELEASED = "released"


OUTCOMES = (RefreshClaim.State.REFRESHED, RefreshClaim.State.FAILED)


@dataclass(frozen=True)
class RefreshAnswer:
    decision: str
    connection_id: str
    generation: int
    round: int
    holder: str = ""
    held_until: datetime | None = None
    retry_after: float | None = None
    current_generation: int | None = None


def _locked_claim(connection_id: str, generation: int) -> RefreshClaim | RefreshAnswer:
    """The claim row of this generation, locked; or the ``fenced`` answer when a reconnect superseded it."""
    conn = _lock_connection(connection_id, exclusive=False)
    _check_generation(conn, generation)
    if generation < conn.current_generation:
        return RefreshAnswer(
            decision=Decision.FENCED,
            connection_id=conn.pk,
            generation=generation,
            round=0,
            current_generation=conn.current_generation,
        )
    RefreshClaim.objects.bulk_create([RefreshClaim(connection=conn, generation=generation)], ignore_conflicts=True)
    return RefreshClaim.objects.select_for_update().get(connection=conn, generation=generation)


def _answer(claim: RefreshClaim, decision: str, **extra) -> RefreshAnswer:
    return RefreshAnswer(
        decision=decision,
        connection_id=claim.connection_id,
        generation=claim.generation,
        round=claim.round,
        holder=claim.holder,
        held_until=claim.held_until,
        **extra,
    )


@transaction.atomic
def refresh_claim(
    *, connection_id: str, generation: int, holder: str, seen_round: int = 0, actor: str
) -> RefreshAnswer:
    """Claim the refresh of this generation's credential; ``seen_round`` is the round of the credential that failed."""
    claim = _locked_claim(connection_id, generation)
    if isinstance(claim, RefreshAnswer):
        return claim  # fenced
    now = timezone.now()
    if claim.state == RefreshClaim.State.HELD and claim.held_until and claim.held_until > now:
        if claim.holder == holder:
            return _answer(claim, Decision.REFRESH)  # a retried claim by the holder
        remaining = (claim.held_until - now).total_seconds()
        return _answer(claim, Decision.WAIT, retry_after=round(min(settings.REVIVE_REFRESH_POLL_SECONDS, remaining), 3))
    if claim.state == RefreshClaim.State.REFRESHED and claim.round > seen_round:
        return _answer(claim, Decision.RELOAD)
    before = {"state": claim.state, "round": claim.round, "holder": claim.holder}
    claim.round += 1
    claim.state = RefreshClaim.State.HELD
    claim.holder = holder
    claim.held_until = now + timedelta(seconds=settings.REVIVE_REFRESH_CLAIM_SECONDS)
    claim.finished_at = None
    claim.save()
    audit_record(
        actor=actor,
        action="refresh.claimed",
        entity_type="connection",
        entity_id=claim.connection_id,
        connection_id=claim.connection_id,
        before=before,
        after={"state": claim.state, "round": claim.round, "holder": holder, "generation": generation},
        arguments={"seen_round": seen_round, "taken_over": before["state"] == RefreshClaim.State.HELD},
    )
    return _answer(claim, Decision.REFRESH)


@transaction.atomic
def refresh_release(
    *, connection_id: str, generation: int, round: int, holder: str, outcome: str, actor: str
) -> RefreshAnswer:
    """The holder says how its refresh went; waiters then reload (``refreshed``) or claim in turn (``failed``)."""
    claim = _locked_claim(connection_id, generation)
    if isinstance(claim, RefreshAnswer):
        return claim  # fenced
    if claim.round == round and claim.holder == holder and claim.state == outcome:
        return _answer(claim, Decision.RELEASED)  # a retried release
    if claim.round != round or claim.holder != holder or claim.state != RefreshClaim.State.HELD:
        raise RefreshClaimNotHeld(
            data={
                "connection_id": connection_id,
                "generation": generation,
                "round": round,
                "current_round": claim.round,
                "state": claim.state,
            }
        )
    claim.state = outcome
    claim.held_until = None
    claim.finished_at = timezone.now()
    claim.save()
    audit_record(
        actor=actor,
        action=f"refresh.{outcome}",
        entity_type="connection",
        entity_id=claim.connection_id,
        connection_id=claim.connection_id,
        before={"state": RefreshClaim.State.HELD, "round": round},
        after={"state": outcome, "round": round, "holder": holder, "generation": generation},
    )
    return _answer(claim, Decision.RELEASED)
