"""The SDK sends W3C traceparent; Revive stores the trace id with the audit events the calls wrote."""

import re

import pytest

from audit.models import AuditEvent
from revive_sdk import Revive

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client(make_connection, make_run, worker_key, revive_url):
    make_connection("conn_microsoft_ops")
    make_run("run_7f2")
    with Revive(revive_url, worker_key) as revive:
        yield revive


def _protect(client, key: str):
    return client.protect_action(
        run_id="run_7f2",
        checkpoint_id="05",
        connection_id="conn_microsoft_ops",
        action_key=key,
        execute=lambda ctx: {"sent": ctx.idempotency_key},
    )


def _trace_ids(key: str) -> list[str]:
    return list(
        AuditEvent.objects.filter(entity_type="action", entity_id__endswith=key)
        .order_by("id")
        .values_list("trace_id", flat=True)
    )


def test_one_protected_action_is_one_trace_and_the_next_another(client):
    _protect(client, "send_a")
    _protect(client, "send_b")

    first, second = _trace_ids("send_a"), _trace_ids("send_b")
    assert len(first) >= 2 and len(set(first)) == 1, first  # begin and commit under one trace id
    assert re.fullmatch(r"[0-9a-f]{32}", first[0])
    assert len(set(second)) == 1 and second[0] != first[0]


def test_inside_an_opentelemetry_span_the_span_s_trace_is_sent(client):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("worker")
    with tracer.start_as_current_span("send brief") as span:
        _protect(client, "send_c")
        expected = format(span.get_span_context().trace_id, "032x")

    assert set(_trace_ids("send_c")) == {expected}
