"""Waiting in the lab: poll until something holds, say now and then that it is still waited for, fail by name.

Every wait of a scenario goes through ``wait_for`` (``WAIT`` seconds at most unless told, ``REVIVE_LAB_WAIT``);
``lab.session.run_lab`` sets ``progress`` for its session so a long wait shows on the page and the terminal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

WAIT = float(os.environ.get("REVIVE_LAB_WAIT", "120"))


class ScenarioFailed(RuntimeError):
    pass


PROGRESS_EVERY = 10.0
progress: Callable[[str], None] | None = None
"""Where ``wait_for`` says that it is still waiting (set by ``lab.session.run_lab`` for its session)."""


def wait_for(check: Callable[[], object], what: str, timeout: float = WAIT, interval: float = 0.05):
    started = time.monotonic()
    deadline, next_note = started + timeout, started + PROGRESS_EVERY
    while True:
        value = check()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        if progress is not None and now >= next_note:
            progress(f"  … still waiting for {what} ({now - started:.0f} s of at most {timeout:.0f} s)")
            next_note = now + PROGRESS_EVERY
        time.sleep(interval)
