"""URLs of the lab identity provider (``lab.idp.settings``): OIDC endpoints and the sign-in pages."""

from django.urls import include, path

from .views import index

urlpatterns = [
    path("", index, name="index"),
    path("", include("allauth.idp.urls")),
    path("accounts/", include("allauth.urls")),
]
