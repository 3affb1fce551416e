from django.contrib import admin
from django.urls import path

from .api import worker_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", worker_api.urls),
]
