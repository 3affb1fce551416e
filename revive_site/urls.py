from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from reauth.webhooks import nango_webhook

from .api import operator_api, worker_api
from .metrics import metrics_view

admin.site.site_header = "Revive"
admin.site.site_title = "Revive console"
admin.site.index_title = "Recovery console"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", worker_api.urls),
    path("api/v2/admin/operator/", operator_api.urls),
    path("reconnect/", include("reauth.urls")),
    path("webhooks/nango/<str:namespace>", nango_webhook, name="nango-webhook"),  # signed; the one CSRF-exempt view
    path("accounts/", include("reauth.allauth_urls")),  # allauth's provider callbacks only
    path("metrics", metrics_view, name="metrics"),  # Prometheus; off unless REVIVE_METRICS_TOKEN is set
]
if settings.LAB_ENABLED:  # the recovery lab: its permission only, absent in production
    urlpatterns.append(path("lab/", include("lab.urls")))
