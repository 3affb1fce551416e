from __future__ import annotations

from django import forms
from django.conf import settings
from django.utils.http import url_has_allowed_host_and_scheme


def next_url_allowed(url: str, *, request) -> bool:
    """Where the done page may send the owner: this site, or a host in ``REVIVE_RECONNECT_REDIRECT_HOSTS``."""
    if not url:
        return True
    if len(url) > 2000 or any(ch in url for ch in "\r\n\t\x00"):
        return False
    hosts = {request.get_host(), *settings.REVIVE_RECONNECT_REDIRECT_HOSTS}
    return url_has_allowed_host_and_scheme(url, allowed_hosts=hosts, require_https=settings.PRODUCTION)


class StartForm(forms.Form):
    """The one button of the landing page (CSRF-protected by the middleware)."""

    next = forms.CharField(required=False, max_length=2000)

    def __init__(self, *args, request, **kwargs):
        self.request = request
        super().__init__(*args, **kwargs)

    def clean_next(self) -> str:
        value = self.cleaned_data.get("next") or ""
        if not next_url_allowed(value, request=self.request):
            raise forms.ValidationError("This address is not an allowed place to return to.", code="next_not_allowed")
        return value
