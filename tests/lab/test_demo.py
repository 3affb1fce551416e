"""The README's main job, run as a user would: a subprocess on the embedded default (SQLite, Celery eager)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "SECRET_KEY")}
    env["REVIVE_VAR_DIR"] = str(tmp_path)
    return env


def test_revive_demo_runs_on_the_embedded_default_and_counts_no_duplicates(tmp_path):
    env = embedded_env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=300)
    proc = subprocess.run([sys.executable, "manage.py", "revive_demo", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert (tmp_path / "revive.sqlite3").exists()
    assert result["ok"] is True
    assert result["case_state"] == "resumed"
    assert result["failure_class"] == "dead_grant" and result["provider_code"] == "AADSTS700082"
    assert result["generation_after"] == result["generation_before"] + 1
    assert result["messages_accepted"] == 1
    assert result["duplicate_effects_observed"] == 0
    assert result["summary_attempts"] == 1 and result["replayed_result_matches"] is True


def test_revive_demo_prints_the_timeline_and_the_incident_record(tmp_path):
    env = embedded_env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=300)
    proc = subprocess.run([sys.executable, "manage.py", "revive_demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for n in range(1, 5):
        assert f"LIVE TRANSITION {n:02d} / 04" in out
    assert "Duplicate effects      0 observed" in out
    assert "access-token" not in out and "Bearer " not in out + proc.stderr
