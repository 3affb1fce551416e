"""The probe runner both doctors share (``operations.probes``): no part of the machine needed."""

from __future__ import annotations

import threading
import time

from operations.probes import DEGRADED, OK, UNREACHABLE, probes_run, start, worst_status


def _unfinished(name: str, error: str) -> dict:
    return {"status": UNREACHABLE, "name": name, "error": error}


def test_a_hung_probe_and_a_crashed_one_mark_only_their_own_component_within_the_budget():
    release = threading.Event()

    def hung() -> dict:
        release.wait(60)
        return {"status": OK, "error": None}

    def crashed() -> dict:
        raise RuntimeError("upstream said no to postgresql://ops:hunter2@db.internal:5432/revive")

    started = time.monotonic()
    try:
        readouts = probes_run(
            {"fine": lambda: {"status": DEGRADED, "error": "slow"}, "runtime:hung": hung, "crashed": crashed},
            budget=0.5,
            unfinished=_unfinished,
            doctor="test-doctor",
        )
    finally:
        release.set()
    assert time.monotonic() - started < 30  # the budget, not the hung probe's 60 s
    assert list(readouts) == ["fine", "runtime:hung", "crashed"]
    assert readouts["fine"] == {"status": DEGRADED, "error": "slow"}
    assert readouts["runtime:hung"] == {
        "status": UNREACHABLE,
        "name": "runtime:hung",
        "error": "The hung probe did not finish within 0.5s.",
    }
    crash = readouts["crashed"]
    assert crash["status"] == UNREACHABLE and crash["error"].startswith("The crashed probe failed unexpectedly: ")
    assert "hunter2" not in crash["error"] and "REDACTED@db.internal" in crash["error"]


def test_a_probe_runs_on_a_daemon_thread_that_never_holds_up_an_exit():
    seen: dict = {}

    def probe() -> dict:
        seen["daemon"] = threading.current_thread().daemon
        return {"status": OK}

    assert start("test-probe", probe).result(timeout=30) == {"status": OK}
    assert seen == {"daemon": True}


def test_the_worst_status_wins_and_an_unknown_one_counts_as_unreachable():
    assert worst_status([]) == OK
    assert worst_status([OK, DEGRADED, OK]) == DEGRADED
    assert worst_status([DEGRADED, "on fire"]) == "on fire"
    assert worst_status([UNREACHABLE, DEGRADED]) == UNREACHABLE
