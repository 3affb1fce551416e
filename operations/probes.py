"""What both doctors share: the three statuses, and probes run side by side within a time budget.

Revive's doctor (:mod:`operations.doctor`) and the Restate doctor
(:func:`operations.restate.operator.restate_doctor`) read one component per
probe; a probe returns its component's readout, ``{"status": ..., ..., "error"}``.
:func:`probes_run` starts every probe on a daemon thread of its own, waits at
most ``budget`` seconds for all of them together, and puts an ``unreachable``
readout in the place of a probe that has not finished or has crashed: a failing
probe marks only its own component, and the caller answers in bounded time.

Daemon threads, not a thread pool: an abandoned probe ends on its own
timeouts, and until then it never holds up the exit of a command (a pool's
threads are joined at interpreter exit).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from audit.redaction import redact_text

logger = logging.getLogger(__name__)

OK = "ok"
DEGRADED = "degraded"
UNREACHABLE = "unreachable"
_SEVERITY = {OK: 0, DEGRADED: 1, UNREACHABLE: 2}

Readout = dict[str, Any]


def worst_status(statuses: Iterable[str]) -> str:
    """The worst of ``statuses`` (an unknown one counts as unreachable); ``ok`` when there is none."""
    return max(statuses, key=lambda status: _SEVERITY.get(status, 2), default=OK)


def ms_since(started: float) -> int:
    """Milliseconds since ``started``, a ``time.monotonic()`` reading."""
    return round((time.monotonic() - started) * 1000)


def error_line(exc: BaseException) -> str:
    """One redacted line for an exception, for a readout's ``error``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact_text(text)[:500]


def start(name: str, fn: Callable[[], Any]) -> concurrent.futures.Future:
    """Run ``fn`` on a daemon thread named ``name``; its result (or exception) lands in the returned future.

    The caller bounds its wait with ``future.result(timeout=...)``; the thread is never joined.
    """
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        from django.db import connections

        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            connections.close_all()  # whatever this thread opened, should a probe ever use the ORM

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def probes_run(
    probes: dict[str, Callable[[], Readout]],
    *,
    budget: float,
    unfinished: Callable[[str, str], Readout],
    doctor: str,
) -> dict[str, Readout]:
    """Run ``probes`` side by side and return their readouts, by name, after at most ``budget`` seconds.

    A probe that has not finished by then, or that raised, gets ``unfinished(name, error)`` instead. In
    ``error`` the probe is named by the part of its name after the last colon (``runtime:restate`` is
    "the restate probe"). ``doctor`` names the threads and the log lines.
    """
    futures = {name: start(f"{doctor}-{name}", probe) for name, probe in probes.items()}
    concurrent.futures.wait(futures.values(), timeout=budget)
    readouts: dict[str, Readout] = {}
    for name, future in futures.items():
        label = name.rpartition(":")[2]
        if not future.done():
            readouts[name] = unfinished(name, f"The {label} probe did not finish within {budget:g}s.")
        elif (exc := future.exception()) is not None:
            logger.error("%s: the %s probe crashed", doctor, label, exc_info=exc)
            readouts[name] = unfinished(name, f"The {label} probe failed unexpectedly: {error_line(exc)}")
        else:
            readouts[name] = future.result()
    return readouts
