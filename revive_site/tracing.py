"""OpenTelemetry tracing, on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OTLP over HTTP/protobuf).

Nothing here is imported otherwise: the WSGI/ASGI entry points and the Celery worker import this module only
behind that setting, so tracing off costs nothing. On, each process (each gunicorn worker, each Celery pool
child) starts a tracer provider with a batch exporter and instruments Django (server spans that continue the
caller's W3C ``traceparent``, as both SDKs send it), psycopg (one span per statement), httpx (client spans that
send ``traceparent`` on, e.g. to a runtime) and, in a Celery worker, Celery (task spans linked to the request that
enqueued them). The audit event stores the trace id of the span it was written under (``audit.context``).
"""

from __future__ import annotations

import threading

_started = False
_lock = threading.Lock()


def tracing_start(*, celery: bool = False) -> bool:
    """Start tracing in this process (once); returns whether it is on."""
    global _started
    from django.conf import settings

    if not settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        return False
    with _lock:
        if _started:
            return True
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.OTEL_SERVICE_NAME}))
        endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/")
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        trace.set_tracer_provider(provider)
        DjangoInstrumentor().instrument()
        PsycopgInstrumentor().instrument(enable_commenter=False)
        HTTPXClientInstrumentor().instrument()
        if celery:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()
        _started = True
        return True


def tracing_flush(timeout_millis: int = 5000) -> None:
    """Send what is buffered (a process about to exit, a test)."""
    if _started:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):  # the SDK's, which tracing_start set (the API's has no buffer)
            provider.force_flush(timeout_millis)
