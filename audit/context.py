"""What the work in hand is about: request id, trace id, namespace, run id, case id.

Set by the request middleware and the Celery task signals (``revive_site``),
narrowed by the code that learns more (a route knows its run, a task its
case), and read by every log line (``revive_site.logging``) and by
:func:`audit.services.audit_record`, which stores the trace id with the event.
A ``contextvars`` variable, so threads and asyncio tasks each see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
from collections.abc import Iterator

FIELDS = ("request_id", "trace_id", "namespace", "run_id", "case_id")
_EMPTY: dict[str, str] = dict.fromkeys(FIELDS, "")
_current: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("revive_work_context", default=_EMPTY)

# W3C Trace Context: version "00", 16-byte trace id, 8-byte parent id, flags; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}$")


def work_context() -> dict[str, str]:
    """The fields known here; the trace id of an active OpenTelemetry span wins over a received header's."""
    fields = _current.get()
    span_trace = _otel_trace_id()
    if span_trace and span_trace != fields["trace_id"]:
        return {**fields, "trace_id": span_trace}
    return fields


def work_context_bind(**fields: str | int | None) -> contextvars.Token:
    """Add fields to the current context (empty values leave a field as it was); reset with the token."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown work-context fields: {sorted(unknown)}")
    merged = {**_current.get(), **{k: str(v) for k, v in fields.items() if v not in (None, "")}}
    return _current.set(merged)


def work_context_reset(token: contextvars.Token) -> None:
    _current.reset(token)


@contextlib.contextmanager
def work_context_bound(**fields: str | int | None) -> Iterator[None]:
    token = work_context_bind(**fields)
    try:
        yield
    finally:
        _current.reset(token)


def trace_id_from_traceparent(header: str | None) -> str:
    """The trace id of a W3C ``traceparent`` header, or "" when it is missing or malformed."""
    match = _TRACEPARENT.match((header or "").strip().lower())
    if not match or set(match["trace"]) == {"0"} or set(match["parent"]) == {"0"}:
        return ""
    return match["trace"]


def _otel_trace_id() -> str:
    """The active span's trace id, only if OpenTelemetry is loaded at all (tracing off: nothing is imported)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
