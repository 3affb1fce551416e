"""``/metrics``: Prometheus's text format, for one process or, with ``PROMETHEUS_MULTIPROC_DIR``, all of them.

Off (404) unless ``REVIVE_METRICS_TOKEN`` is set; then a scrape must carry ``Authorization: Bearer <token>``
(401 otherwise). The database-backed figures (cases, outbox, reconnects)
are read here, at scrape time.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from operations.metrics import CasesCollector
from reauth.metrics import ReconnectCollector


def _authorized(request: HttpRequest) -> bool:
    token = settings.REVIVE_METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not settings.REVIVE_METRICS_TOKEN:
        raise Http404("metrics are off: set REVIVE_METRICS_TOKEN")
    if not _authorized(request):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="revive-metrics"'
        return response
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessMetrics())
    registry.register(CasesCollector())
    registry.register(ReconnectCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _ProcessMetrics:
    """This process's own metrics (the default registry), beside the per-scrape database collectors."""

    def collect(self):
        yield from REGISTRY.collect()
