"""The client's heartbeats: one thread beats every action executing in the client; a short action starts none."""

from __future__ import annotations

import threading
import time

from revive_sdk.client import _Heartbeats
from revive_sdk.flows import Http


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def beat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "revive-heartbeat"]


def test_actions_executing_at_once_share_one_beating_thread_and_stop_beating_when_removed():
    sent: list[str] = []
    heartbeats = _Heartbeats(lambda request: sent.append(request.path))
    before = len(beat_threads())
    first = heartbeats.add(Http("POST", "/a/heartbeat", {"generation": 1}), 0.05)
    second = heartbeats.add(Http("POST", "/b/heartbeat", {"generation": 1}), 0.05)
    wait_for(lambda: sent.count("/a/heartbeat") >= 3 and sent.count("/b/heartbeat") >= 3)
    assert len(beat_threads()) == before + 1
    heartbeats.remove(first)
    time.sleep(0.2)  # any beat of /a already taken from the schedule has been sent by now
    seen = sent.count("/a/heartbeat")
    wait_for(lambda: sent.count("/b/heartbeat") >= seen + 3)
    assert sent.count("/a/heartbeat") == seen
    heartbeats.remove(second)
    heartbeats.close()
    wait_for(lambda: len(beat_threads()) == before)


def test_a_failing_beat_is_skipped_and_the_next_is_still_sent():
    calls: list[int] = []

    def send(request):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("server away")

    heartbeats = _Heartbeats(send)
    token = heartbeats.add(Http("POST", "/a/heartbeat", {"generation": 1}), 0.05)
    wait_for(lambda: len(calls) >= 3)
    heartbeats.remove(token)
    heartbeats.close()


def test_an_action_that_returns_before_its_first_beat_starts_no_more_threads():
    heartbeats = _Heartbeats(lambda request: None)
    before = len(beat_threads())
    for _ in range(200):
        heartbeats.remove(heartbeats.add(Http("POST", "/a/heartbeat", {}), 30.0))
    assert len(beat_threads()) <= before + 1
    heartbeats.close()
    wait_for(lambda: len(beat_threads()) == before)
