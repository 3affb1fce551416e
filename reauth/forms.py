from __future__ import annotations

from django import forms
from django.conf import settings
from django.utils.http import url_has_allowed_host_and_scheme

from .models import NangoSigningKey


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


class NangoSigningKeyForm(forms.ModelForm):
    """The console's form for a namespace's Nango webhook signing key: write-only. The key is typed and never
    shown again, not even on a page that refuses the submission; a stored key is replaced or cleared."""

    signing_key = forms.CharField(
        required=False,
        max_length=500,
        label="Signing key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Nango → Environment settings → Webhooks → webhook signing key (not the API key). "
        "It is stored encrypted and never shown again.",
    )
    clear = forms.BooleanField(
        required=False,
        label="Clear the key",
        help_text="Check this namespace's webhooks against the environment's keys again.",
    )

    class Meta:
        model = NangoSigningKey
        fields = ["namespace"]

    def clean(self):
        data = super().clean()
        key, clear = data.get("signing_key", ""), data.get("clear", False)
        if self.instance._state.adding and not key:
            self.add_error("signing_key", "Type the namespace's signing key.")
        elif key and clear:
            raise forms.ValidationError("Type a new key or clear the key, not both.", code="key_and_clear")
        elif not key and not clear:
            raise forms.ValidationError(
                "Type a new key to replace the stored one, or clear it.", code="nothing_to_change"
            )
        return data
