"""The connection form: what an operator types to register a connection, checked before anything is stored.

Used by the admin (``ConnectionAdmin``) and by ``manage.py revive_connection``, so both refuse the same input
with the same words: Entra tenant and object ids are GUIDs, an issuer is an https URL (http only on loopback,
for a local identity provider), the owner's e-mail is an e-mail. A placeholder such as ``<tid>`` copied from the
README never becomes the identity Revive insists on at reconnect.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django import forms

from reauth.classification import Provider

from .models import Connection

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def guid_problem(value: str, *, what: str) -> str | None:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return f"{what} must be a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47, not {value!r}."
    if str(parsed) != value.lower() or "{" in value:
        return f"{what} must be a GUID in its 8-4-4-4-12 form, not {value!r}."
    return None


def issuer_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        return f"The issuer must be a URL such as https://tenant.eu.auth0.com/, not {value!r}."
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return "The issuer must use https (http only for an identity provider on this machine)."
    if parts.username or parts.password or parts.query or parts.fragment:
        return "The issuer must not carry user-info, a query or a fragment."
    return None


class ConnectionForm(forms.ModelForm):
    class Meta:
        model = Connection
        fields = ["id", "provider", "display_name", "owner_email", "owner_name", "provider_subject",
                  "provider_tenant", "provider_issuer", "provider_org"]

    def clean(self):
        data = super().clean()
        provider = data.get("provider")
        subject = (data.get("provider_subject") or "").strip()
        tenant = (data.get("provider_tenant") or "").strip()
        issuer = (data.get("provider_issuer") or "").strip()
        if provider == Provider.ENTRA:
            if not tenant:
                self.add_error("provider_tenant", "Entra connections need the tenant id (tid), a GUID.")
            elif problem := guid_problem(tenant, what="The Entra tenant id (tid)"):
                self.add_error("provider_tenant", problem)
            if subject and (problem := guid_problem(subject, what="The Entra object id (oid)")):
                self.add_error("provider_subject", problem)
        elif provider in (Provider.AUTH0, Provider.OIDC):
            if not issuer:
                self.add_error("provider_issuer", "Auth0 and OIDC connections need the issuer (iss), a URL.")
        if issuer and (problem := issuer_problem(issuer)):
            self.add_error("provider_issuer", problem)
        return data
