"""The README's first command, run as a user runs it: a subprocess on the embedded default (SQLite, Celery eager,
no servers), from this checkout, with its own REVIVE_VAR_DIR and no DATABASE_URL / REDIS_URL."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LANGGRAPH = ROOT / ".venv-lgserver" / "bin" / "langgraph"


def embedded_env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "SECRET_KEY")
        and not k.startswith(("PYTEST_", "REVIVE_"))
    }
    env["REVIVE_VAR_DIR"] = str(tmp_path)
    return env


def manage(env, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_recovery_lab_runs_the_four_scenarios_and_prints_timeline_and_records(tmp_path):
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    proc = manage(env, "recovery_lab")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
    assert (tmp_path / "revive.sqlite3").exists()
    for n in range(1, 5):
        assert out.count(f"LIVE TRANSITION {n:02d} / 04") == 4, n  # once per scenario
    assert out.count("Duplicate effects      0 observed (1 message(s) accepted by the mail service)") == 4
    assert out.count("Credential generation  01 → 02") == 4
    assert out.count("Provider signal        dead_grant AADSTS700082") == 4  # the default provider: Entra
    assert out.index("▸ checkpoint 01 reached") < out.index("▸ checkpoint 05 reached")
    assert "Traceback" not in out + proc.stderr
    assert out.count("Checkpoint             05 / prepare brief") == 4
    assert "Refused identity" in out and "mallory@contoso.example" in out
    assert "ambiguous → reconciled_committed" in out
    assert re.search(r"Worker process\s+(\d+) killed; brief sent by pid (\d+)", out)
    assert "4 scenario(s) as expected" in out
    assert re.search(r"Lab time: \d+\.\d s", out)
    assert "/lab/" in out  # where to open the console
    assert "Bearer " not in out + proc.stderr and "rvr_" not in out


def test_recovery_lab_json_for_one_scenario(tmp_path):
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    proc = manage(env, "recovery_lab", "--scenario", "revoked", "--provider", "entra", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and len(report["scenarios"]) == 1
    r = report["scenarios"][0]
    assert (r["failure_class"], r["provider_code"]) == ("dead_grant", "AADSTS700082")
    assert (r["generation_before"], r["generation_after"], r["duplicate_effects_observed"]) == (1, 2, 0)
    assert r["live_transitions"] == [1, 2, 3, 4] and r["case_state"] == "resumed"
    assert r["checkpoints_completed"] == ["01", "02", "03", "04", "05"]

    typescript_elsewhere = manage(env, "recovery_lab", "--runtime", "temporal", "--sdk", "typescript")
    assert typescript_elsewhere.returncode == 2 and "--runtime langgraph only" in typescript_elsewhere.stderr


def test_recovery_lab_cae_and_token_vault_scenarios(tmp_path):
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    proc = manage(env, "recovery_lab", "--scenario", "cae", "--provider", "entra", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    r = json.loads(proc.stdout)["scenarios"][0]
    assert (r["failure_class"], r["provider_code"], r["case_state"]) == (
        "interaction_required",
        "insufficient_claims",
        "resumed",
    )
    assert (r["generation_before"], r["generation_after"], r["duplicate_effects_observed"]) == (1, 2, 0)
    assert json.loads(r["notes"]["case_claims"]) == json.loads(r["notes"]["challenge_claims"])

    wrong = manage(env, "recovery_lab", "--scenario", "cae", "--provider", "oidc")
    assert wrong.returncode == 2 and "--provider entra" in wrong.stderr

    vault = manage(env, "recovery_lab", "--scenario", "wrong-account", "--provider", "auth0-token-vault", "--json")
    assert vault.returncode == 0, vault.stderr[-3000:] + vault.stdout[-3000:]
    r = json.loads(vault.stdout)["scenarios"][0]
    assert (r["failure_class"], r["provider_code"]) == (
        "relink_required",
        "federated_connection_refresh_token_not_found",
    )
    assert r["notes"]["sign_in"][0]["refused"] and r["notes"]["sign_in"][1]["consumed"]
    assert (r["generation_before"], r["generation_after"], r["duplicate_effects_observed"]) == (1, 2, 0)


def test_recovery_lab_with_the_typescript_worker(tmp_path):
    """``--sdk typescript``: the briefing is a LangGraph.js graph in Node processes using the TypeScript SDK; the same
    four scenarios, the same incident records, nothing sent twice (scripts/setup builds sdk/typescript)."""
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    proc = manage(env, "recovery_lab", "--sdk", "typescript", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout)
    assert (report["ok"], report["sdk"]) == (True, "typescript")
    by_name = {r["scenario"]: r for r in report["scenarios"]}
    assert sorted(by_name) == ["revoked", "timeout", "worker-lost", "wrong-account"]
    for r in by_name.values():
        assert r["sdk"] == "typescript"
        assert (r["generation_before"], r["generation_after"]) == (1, 2)
        assert (r["messages_accepted"], r["duplicate_effects_observed"]) == (1, 0)
        assert r["live_transitions"] == [1, 2, 3, 4] and r["case_state"] == "resumed"
        assert r["checkpoints_completed"] == ["01", "02", "03", "04", "05"]
        assert (r["checkpoint"], r["action_key"]) == ("05 / prepare brief", "send_exec_05")
    assert (by_name["timeout"]["notes"]["after_timeout"], by_name["timeout"]["send_state"]) == (
        "ambiguous",
        "reconciled_committed",
    )
    lost = by_name["worker-lost"]
    assert lost["brief_sent_by_pid"] not in (None, lost["notes"]["killed_pid"])
    assert by_name["wrong-account"]["notes"]["refused"]["presented"]
    assert "Bearer " not in proc.stdout + proc.stderr


LAB_KEYS = (
    "import django; django.setup(); from cases.models import ApiKey; "
    "print(ApiKey.objects.filter(name__startswith='lab-session-').count(), "
    "ApiKey.objects.filter(name__startswith='lab-session-', revoked_at__isnull=True).count())"
)


def lab_keys(env) -> tuple[int, int]:
    """(lab session keys ever created, those still active) in the lab's SQLite database."""
    proc = subprocess.run(
        [sys.executable, "-c", LAB_KEYS],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "revive_site.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    made, active = proc.stdout.split()
    return int(made), int(active)


def test_the_lab_revokes_its_worker_key_when_it_ends_and_after_ctrl_c(tmp_path):
    import signal
    import time

    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    assert manage(env, "recovery_lab", "--scenario", "revoked", "--json").returncode == 0
    assert lab_keys(env) == (1, 0)

    proc = subprocess.Popen(
        [sys.executable, "manage.py", "recovery_lab", "--scenario", "revoked"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        seen = ""
        while "▶" not in seen:  # the key exists before the first scenario starts
            assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
            seen += proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lab_keys(env) == (2, 0)


def assert_four_on(runtime: str, tmp_path) -> dict[str, dict]:
    """--runtime R: the lab starts R's server and its worker processes itself; the same records as on LangGraph."""
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    proc = manage(env, "recovery_lab", "--runtime", runtime, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["runtime"] == runtime
    by = {r["scenario"]: r for r in report["scenarios"]}
    assert list(by) == ["revoked", "wrong-account", "timeout", "worker-lost"]
    for r in by.values():
        assert r["runtime"] == runtime and r["case_state"] == "resumed", r
        assert (r["generation_before"], r["generation_after"], r["duplicate_effects_observed"]) == (1, 2, 0)
        assert r["checkpoints_completed"] == ["01", "02", "03", "04", "05"]
        assert r["live_transitions"] == [1, 2, 3, 4]
    assert (
        by["timeout"]["notes"]["after_timeout"] == "ambiguous" and by["timeout"]["send_state"] == "reconciled_committed"
    )
    lost = by["worker-lost"]
    assert lost["notes"]["workers"] == ["worker:lab-A", "worker:lab-B"]
    assert lost["brief_sent_by_pid"] not in (None, lost["notes"]["killed_pid"])
    for pid in (lost["notes"]["killed_pid"], lost["brief_sent_by_pid"]):  # the lab stopped its workers
        assert not Path(f"/proc/{pid}").exists(), pid
    return by


def test_recovery_lab_on_temporal_runs_the_four_scenarios_with_its_own_test_server(tmp_path):
    assert_four_on("temporal", tmp_path)


def test_recovery_lab_on_restate_runs_the_four_scenarios_with_its_own_restate_server(tmp_path):
    assert_four_on("restate", tmp_path)


@pytest.mark.skipif(
    not LANGGRAPH.exists(),
    reason=f"the Agent Server's venv is absent ({LANGGRAPH} not found): "
    "run scripts/setup --test to create .venv-lgserver",
)
def test_recovery_lab_on_the_langgraph_agent_server_runs_the_four_scenarios_with_its_own_langgraph_dev(tmp_path):
    """``--runtime langgraph-server``: the lab starts ``langgraph dev`` as each scenario's worker; Revive resumes the
    thread over the server's API. On the in-memory dev server the worker-lost kill is a clean shutdown (SIGTERM)."""
    by = assert_four_on("langgraph-server", tmp_path)
    lost = by["worker-lost"]["notes"]
    assert lost["stop_signal"] == "SIGTERM"
    for r in by.values():  # each run is a thread the server made
        uuid.UUID(r["thread_id"])


def test_recovery_lab_with_the_grant_held_by_nango_and_by_scalekit(tmp_path):
    """``--provider nango`` / ``scalekit``: the four scenarios with the broker stand-ins; Revive stores no token."""
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    for broker in ("nango", "scalekit"):
        proc = manage(env, "recovery_lab", "--provider", broker, "--json", timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        report = json.loads(proc.stdout)
        assert report["ok"] is True and len(report["scenarios"]) == 4, broker
        for r in report["scenarios"]:
            assert (r["generation_before"], r["generation_after"], r["duplicate_effects_observed"]) == (1, 2, 0), r
            assert r["live_transitions"] == [1, 2, 3, 4] and r["case_state"] == "resumed", r
            assert r["failure_class"] == "dead_grant", r
        wrong = next(r for r in report["scenarios"] if r["scenario"] == "wrong-account")
        assert wrong["notes"]["refused"]["presented"]["label"] == "mallory@contoso.example"
