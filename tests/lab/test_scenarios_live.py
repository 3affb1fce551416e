"""The four scenarios on PostgreSQL and Redis: Revive on the live server, resumes in a real Celery worker process,
the lab identity provider as a process, the owner signing in through its real redirects."""

from __future__ import annotations

import json

import pytest

from audit.models import AuditEvent
from lab.scenarios import run_scenario
from lab.world import SCENARIOS

pytestmark = pytest.mark.django_db(transaction=True)

LIVE_ORDER = ["case.opened", "case.reauthorized", "lease.advanced", "case.resumed"]


def live_actions(result: dict) -> list[str]:
    events = AuditEvent.objects.filter(case_reference=result["case_id"], action__in=LIVE_ORDER).order_by("id")
    return list(events.values_list("action", flat=True))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_runs_end_to_end_with_one_message_per_action(name, lab_world, celery_manager):
    lines: list[str] = []
    result = run_scenario(name, lab_world, say=lines.append)

    assert result["ok"], (result["problems"], celery_manager.log()[-3000:])
    assert live_actions(result) == LIVE_ORDER  # the four live transitions, in order, once each
    assert result["live_transitions"] == [1, 2, 3, 4]
    messages = lab_world.standin.messages_for(result["run_id"])
    assert len(messages) == 1 and result["duplicate_effects_observed"] == 0
    assert (result["generation_before"], result["generation_after"]) == (1, 2)
    assert result["checkpoint"] == "05 / prepare brief" and result["action_key"] == "send_exec_05"
    assert messages[0]["generation"] == 2 or name == "timeout"  # the timed-out send went out under generation 1
    assert messages[0]["pid"] in celery_manager.pids or name == "timeout"  # Revive's worker resumed the run

    if name == "wrong-account":
        refused = result["notes"]["refused"]
        assert refused["presented"]["subject"] != refused["expected"]["subject"]
        assert result["notes"]["sign_in"][0]["refused"] and result["notes"]["sign_in"][1]["consumed"]
    if name == "timeout":
        assert result["notes"]["after_timeout"] == "ambiguous" and result["send_state"] == "reconciled_committed"
    if name == "worker-lost":
        assert result["brief_sent_by_pid"] != result["notes"]["killed_pid"]


def test_a_cae_challenge_parks_the_run_and_the_owner_signs_in_with_the_claims(lab_world, celery_manager):
    """Entra continuous access evaluation: the mail API revokes the session mid-run with a claims challenge."""
    challenges_before = lab_world.standin.challenges
    result = run_scenario("cae", lab_world, provider="entra")

    assert result["ok"], (result["problems"], celery_manager.log()[-3000:])
    assert (result["failure_class"], result["provider_code"]) == ("interaction_required", "insufficient_claims")
    assert lab_world.standin.challenges == challenges_before + 1
    notes = result["notes"]
    challenge = json.loads(notes["challenge_claims"])
    assert json.loads(notes["case_claims"]) == challenge and notes["case_reason"] == "claims_challenge"
    assert (
        notes["idp_claims"]["access_token"]["nbf"] == challenge["access_token"]["nbf"]
    )  # what the owner signed in with
    assert notes["idp_claims"]["access_token"]["xms_cc"] == {"values": ["cp1"]}
    opened = AuditEvent.objects.get(action="case.opened", case_reference=result["case_id"])
    assert json.loads(opened.arguments["provider_error"]["claims"]) == challenge
    assert live_actions(result) == LIVE_ORDER
    messages = lab_world.standin.messages_for(result["run_id"])
    assert len(messages) == 1 and messages[0]["generation"] == 2 and messages[0]["pid"] in celery_manager.pids


@pytest.mark.parametrize("name", ["revoked", "wrong-account"])
def test_token_vault_relink_resumes_the_run(name, lab_world, celery_manager):
    """Auth0 Token Vault: the exchange fails once the upstream grant is gone; the owner re-links the account."""
    result = run_scenario(name, lab_world, provider="auth0-token-vault")

    assert result["ok"], (result["problems"], celery_manager.log()[-3000:])
    assert (result["failure_class"], result["provider_code"]) == (
        "relink_required",
        "federated_connection_refresh_token_not_found",
    )
    assert live_actions(result) == LIVE_ORDER
    messages = lab_world.standin.messages_for(result["run_id"])
    assert len(messages) == 1 and messages[0]["generation"] == 2 and messages[0]["pid"] in celery_manager.pids
    linked = lab_world.vault.connected("auth0|ada", "google-oauth2")
    assert linked.alive and linked.upstream == "ada"
    if name == "wrong-account":
        assert result["notes"]["sign_in"][0]["refused"] and result["notes"]["sign_in"][1]["consumed"]
