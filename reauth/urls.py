from django.urls import path, re_path

from . import views

app_name = "reauth"

urlpatterns = [
    path("l/<str:token>", views.link, name="link"),
    path("r/<uuid:public_id>/", views.landing, name="landing"),
    path("r/<uuid:public_id>/start", views.start, name="start"),
    path("r/<uuid:public_id>/relinked", views.relinked, name="relinked"),
    path("r/<uuid:public_id>/broker", views.broker, name="broker"),
    path("r/<uuid:public_id>/done", views.done, name="done"),
    path("r/<uuid:public_id>/refused", views.refused, name="refused"),
    re_path(r"^.*$", views.not_found),  # a mangled link gets our 404 page with its code, not a bare one
]
