from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.idp.oidc.adapter import DefaultOIDCAdapter


class LabOIDCAdapter(DefaultOIDCAdapter):
    """Adds Entra's ``tid``/``oid`` (and ``org_id``) to the ID token and userinfo of every lab user."""

    def get_claims(self, purpose, user, client, scopes, email=None, **kwargs: Any) -> dict[str, Any]:
        from .models import LabIdentity

        claims = super().get_claims(purpose, user, client, scopes, email=email, **kwargs)
        identity = LabIdentity.objects.filter(user=user).first()
        if identity is not None:
            claims["tid"] = identity.tenant_id
            claims["oid"] = identity.object_id
            if identity.org_id:
                claims["org_id"] = identity.org_id
        return claims


class LabAccountAdapter(DefaultAccountAdapter):
    """Lab users are seeded (``manage.py idp_seed``), never signed up."""

    def is_open_for_signup(self, request) -> bool:
        return False
