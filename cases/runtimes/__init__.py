"""Runtime adapters: how Revive parks, resumes and inspects a run in LangGraph, Temporal or Restate.

``adapter_for(run.runtime)`` returns the process's adapter for that runtime,
built from ``settings.REVIVE_RUNTIME_ADAPTERS`` (runtime -> dotted path). The
runtime libraries are imported only by the adapter that needs them.
"""

from __future__ import annotations

import os
import threading

from django.conf import settings
from django.utils.module_loading import import_string

from .base import (
    ABANDON_KIND,
    RESUME_KIND,
    AbandonNotSupported,
    AbandonRequest,
    ResumeRequest,
    ResumeResult,
    RunGone,
    RunNotWaiting,
    RunStatus,
    RuntimeAdapter,
    RuntimeDeliveryError,
    RuntimeMisconfigured,
    RuntimeUnavailable,
)

__all__ = [
    "ABANDON_KIND",
    "RESUME_KIND",
    "AbandonNotSupported",
    "AbandonRequest",
    "ResumeRequest",
    "ResumeResult",
    "RunGone",
    "RunNotWaiting",
    "RunStatus",
    "RuntimeAdapter",
    "RuntimeDeliveryError",
    "RuntimeMisconfigured",
    "RuntimeUnavailable",
    "adapter_for",
    "reset_adapters",
]

_lock = threading.Lock()
_adapters: dict[str, RuntimeAdapter] = {}
_pid = os.getpid()


def adapter_for(runtime: str) -> RuntimeAdapter:
    """The adapter of ``runtime`` for this process (a forked Celery child builds its own)."""
    global _pid
    with _lock:
        if os.getpid() != _pid:  # inherited from the parent across fork: its connections are not ours
            _adapters.clear()
            _pid = os.getpid()
        adapter = _adapters.get(runtime)
        if adapter is None:
            path = settings.REVIVE_RUNTIME_ADAPTERS.get(runtime)
            if path is None:
                raise RuntimeMisconfigured(f"no runtime adapter is configured for '{runtime}'")
            adapter = import_string(path)()
            _adapters[runtime] = adapter
        return adapter


def reset_adapters() -> None:
    """Close and forget every adapter of this process (tests, settings changes)."""
    with _lock:
        for adapter in _adapters.values():
            adapter.close()
        _adapters.clear()
