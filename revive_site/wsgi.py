import os

import django
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "revive_site.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

if settings.OTEL_EXPORTER_OTLP_ENDPOINT:  # before the middleware loads: Django's instrumentation adds its own
    from revive_site.tracing import tracing_start

    tracing_start()
application = get_wsgi_application()
