"""Seed the lab identity provider: three test users and one OIDC client for Revive.

    DJANGO_SETTINGS_MODULE=lab.idp.settings python manage.py idp_seed \\
        --redirect-uri http://127.0.0.1:8000/accounts/oidc/lab-idp/login/callback/ --client-secret <secret>

* ``ada``          -- the right user: tenant Contoso, object id ADA_OID
* ``mallory``      -- the wrong user: tenant Contoso, another object id
* ``ada-fabrikam`` -- the same object id as ``ada`` but in tenant Fabrikam

Running it again updates everything in place (same users, same client id). It
prints JSON with each user's ``sub``, ``tid`` and ``oid``, which is what a
Revive connection records.
"""

from __future__ import annotations

import json
import secrets

from allauth.account.models import EmailAddress
from allauth.idp.oidc.models import Client
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from lab.idp.models import LabIdentity

CONTOSO_TID = "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01"
FABRIKAM_TID = "9a0d4e7b-1c3f-4b2a-8e6d-5f7c2b1a0d02"
ADA_OID = "b1e2c3d4-5a6b-4c7d-8e9f-0a1b2c3d4e01"
MALLORY_OID = "c2f3d4e5-6b7c-4d8e-9f0a-1b2c3d4e5f02"

USERS = {
    "right": {
        "username": "ada",
        "email": "ada@contoso.example",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "tid": CONTOSO_TID,
        "oid": ADA_OID,
    },
    "wrong": {
        "username": "mallory",
        "email": "mallory@contoso.example",
        "first_name": "Mallory",
        "last_name": "Moriarty",
        "tid": CONTOSO_TID,
        "oid": MALLORY_OID,
    },
    "other_tenant": {
        "username": "ada-fabrikam",
        "email": "ada@fabrikam.example",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "tid": FABRIKAM_TID,
        "oid": ADA_OID,
    },
}


class Command(BaseCommand):
    help = "Create (or update) the lab provider's test users and Revive's OIDC client."

    def add_arguments(self, parser):
        parser.add_argument(
            "--redirect-uri",
            action="append",
            required=True,
            dest="redirect_uris",
            help="Revive's callback, e.g. http://127.0.0.1:8000/accounts/oidc/lab-idp/login/callback/ (repeatable).",
        )
        parser.add_argument("--client-id", default="revive-lab")
        parser.add_argument("--client-secret", default="", help="Generated and printed when omitted.")
        parser.add_argument("--password", default="lab-password-1", help="The password of every test user.")

    @transaction.atomic
    def handle(self, *args, **o):
        secret = o["client_secret"] or secrets.token_urlsafe(32)
        client, _ = Client.objects.get_or_create(id=o["client_id"], defaults={"name": "Revive (lab)"})
        client.name = "Revive (lab)"
        client.type = Client.Type.CONFIDENTIAL
        client.set_scopes(["openid", "profile", "email"])
        client.set_default_scopes(["openid", "profile", "email"])
        client.set_grant_types([Client.GrantType.AUTHORIZATION_CODE, Client.GrantType.REFRESH_TOKEN])
        client.set_response_types(["code"])
        client.set_redirect_uris(o["redirect_uris"])
        client.skip_consent = True
        client.set_secret(secret)
        client.full_clean()
        client.save()

        User = get_user_model()
        out = {"client_id": client.id, "users": {}}
        if not o["client_secret"]:
            out["client_secret"] = secret
        for role, spec in USERS.items():
            user, _ = User.objects.get_or_create(username=spec["username"])
            user.email = spec["email"]
            user.first_name = spec["first_name"]
            user.last_name = spec["last_name"]
            user.set_password(o["password"])
            user.save()
            EmailAddress.objects.filter(user=user).exclude(email=spec["email"]).delete()
            EmailAddress.objects.update_or_create(
                user=user, email=spec["email"], defaults={"verified": True, "primary": True}
            )
            LabIdentity.objects.update_or_create(
                user=user, defaults={"tenant_id": spec["tid"], "object_id": spec["oid"]}
            )
            out["users"][role] = {
                "username": user.username,
                "email": spec["email"],
                "sub": str(user.pk),
                "tid": spec["tid"],
                "oid": spec["oid"],
            }
        self.stdout.write(json.dumps(out, indent=2))
