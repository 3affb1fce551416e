"""W3C Trace Context (``traceparent``) on every call the SDK makes to Revive.

Revive stores the trace id with each audit event and logs it with each line, so one run can be followed from the
worker through the API into Celery. The header is ``traceparent: 00-<trace id>-<parent id>-01`` (version 00,
32 lowercase hex digits of trace id, 16 of parent span id, flags 01 = sampled):

* inside an active OpenTelemetry span (the worker traces with OpenTelemetry and ``opentelemetry`` is imported),
  the span's context is sent, through OpenTelemetry's own propagator (``tracestate`` too);
* otherwise the SDK makes its own: one trace id per SDK operation (a ``protect_action`` is one trace over its
  begin, commit or fail calls), a fresh parent id per request.

Nothing here imports OpenTelemetry: it is used only if the worker process already loaded it.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import sys
from collections.abc import Iterator

_operation: contextvars.ContextVar[str] = contextvars.ContextVar("revive_sdk_operation_trace", default="")


def new_trace_id() -> str:
    return secrets.token_hex(16)


@contextlib.contextmanager
def operation() -> Iterator[str]:
    """The trace id of the SDK operation under way; an operation started inside another (a credential helper's
    refresh claim inside ``protect_action``) joins the outer one's trace."""
    outer = _operation.get()
    if outer:
        yield outer
        return
    token = _operation.set(new_trace_id())
    try:
        yield _operation.get()
    finally:
        _operation.reset(token)


def headers_for(trace_id: str) -> dict[str, str]:
    """The trace headers of one request of the operation ``trace_id`` names."""
    carrier = _from_active_span()
    if carrier:
        return carrier
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def _from_active_span() -> dict[str, str]:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
