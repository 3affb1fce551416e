"""The WSGI application: the worker API (``/api/v1/``) through a lean middleware chain, everything else through all of it.

A worker API call authenticates with ``X-Api-Key`` and never uses a session, a cookie, CSRF, the
signed-in user, messages, allauth's account state or static files, and it is the call every protected
action makes twice. So its requests go to a handler built with the project's ``MIDDLEWARE`` minus
``settings.WORKER_API_SKIPPED_MIDDLEWARE``, read when the handler is built (after tracing, whose Django
instrumentation adds its own middleware): middleware added to ``MIDDLEWARE`` later applies to it unless it
is listed there, so the request id and trace context (``WorkContextMiddleware``), the error shape and the
body limit stay. The admin, the hosted pages and the operator API keep the full chain.
"""

import os

import django
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

if settings.OTEL_EXPORTER_OTLP_ENDPOINT:  # before the middleware loads: Django's instrumentation adds its own
    from revive_site.tracing import tracing_start

    tracing_start()

WORKER_API_PREFIX = "/api/v1/"


def worker_api_middleware() -> list[str]:
    """The worker API's chain: the project's middleware, in order, minus what serves browsers."""
    return [m for m in settings.MIDDLEWARE if m not in settings.WORKER_API_SKIPPED_MIDDLEWARE]


class WorkerApiHandler(WSGIHandler):
    """Django's WSGI handler with the worker API's middleware chain; begin and commit skip the resolver and ninja's
    dispatch (``revive_site.worker_fastlane``), inside the same chain."""

    def load_middleware(self, is_async=False):
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = worker_api_middleware()  # read once, here, while the handler is built
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full

    def _get_response(self, request):
        from revive_site import worker_fastlane  # imports the URLconf's APIs: after django.setup()

        response = worker_fastlane.answer(request)
        return response if response is not None else super()._get_response(request)


class PathDispatch:
    def __init__(self, default: WSGIHandler, worker_api: WSGIHandler) -> None:
        self.default, self.worker_api = default, worker_api

    def __call__(self, environ, start_response):
        app = self.worker_api if environ.get("PATH_INFO", "").startswith(WORKER_API_PREFIX) else self.default
        return app(environ, start_response)


application = PathDispatch(get_wsgi_application(), WorkerApiHandler())
