"""The fault suite's CI sample: one trial of every fault kind on every runtime, real processes only.

``bench/faults.py --sample`` runs them (its own private PostgreSQL and Redis, Revive's web, a Celery worker and
beat, LangGraph, the Temporal test server, restate-server; see ``tests/faults/harness.py``) once for the session;
each (runtime, kind) is then one test that fails with what the harness saw. The sample runs with the ``short``
profile (shortened locks, sweeps and resume retries) to stay within CI's time; ``bench/faults.py`` runs the
long version with Revive's default timeouts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.processes import spawn, stop

from .harness import KINDS, RUNTIMES

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TIMEOUT = 1800
# The first test waits for the whole sample (the session fixture): pytest.ini's 600 s per test would cut it short
# on a loaded machine, where the sample takes longer than that.
pytestmark = pytest.mark.timeout(SAMPLE_TIMEOUT + 300)


@pytest.fixture(scope="session")
def fault_sample(tmp_path_factory) -> dict[tuple[str, str], dict]:
    out = tmp_path_factory.mktemp("faults")
    report, log = out / "results.json", out / "faults.log"
    with open(log, "wb") as sink:
        process = spawn(
            [
                sys.executable,
                "bench/faults.py",
                "--sample",
                "--profile",
                "short",
                "--concurrency",
                "5",
                "--json",
                str(report),
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        process.wait(SAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(process, grace=60)
    if not report.exists():
        pytest.fail(f"bench/faults.py --sample produced no results:\n{log.read_text(errors='replace')[-4000:]}")
    print(log.read_text(errors="replace")[-6000:])
    return json.loads(report.read_text())


@pytest.fixture(scope="session")
def fault_trials(fault_sample) -> dict[tuple[str, str], dict]:
    return {(r["runtime"], r["kind"]): r for r in fault_sample["trials"]}


def test_no_process_of_the_stack_exited_unless_a_fault_killed_it(fault_sample):
    """A Celery worker (or web, beat, runtime worker) that dies on its own -- a Redis restart -- is a finding."""
    assert not fault_sample["crashes"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_effect_once_and_no_run_silently_stuck(fault_trials, runtime, kind):
    result = fault_trials.get((runtime, kind))
    assert result is not None, f"no trial ran for {runtime} × {kind}"
    assert result["duplicates"] == 0, f"duplicate effects: {result}"
    assert result["lost"] == 0, f"lost effects: {result}"
    assert not result["violations"], f"invariants broken: {result}"
    assert result["outcome"] in ("finished", "operator_visible"), (
        f"{runtime} × {kind}: run {result['run_id']} is {result['outcome']}: {result['detail']}"
    )
