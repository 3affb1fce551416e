"""Only allauth's provider callbacks are mounted: sign-in starts from the reconnect page's POST button
(``reauth.views.start``), and allauth's own login, signup and account pages do not exist on Revive."""

from allauth.socialaccount.providers.auth0 import views as auth0_views
from allauth.socialaccount.providers.openid_connect import views as oidc_views
from django.urls import path

urlpatterns = [
    path("oidc/<str:provider_id>/login/callback/", oidc_views.callback, name="openid_connect_callback"),
    path("auth0/login/callback/", auth0_views.oauth2_callback, name="auth0_callback"),
]
