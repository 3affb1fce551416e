import re

from django.core.management.base import BaseCommand

from cases.models import DEFAULT_NAMESPACE
from cases.namespaces import namespace_ensure, qualify
from cases.services import connection_create
from reauth.classification import Provider
from revive_site.errors import DomainError


class Command(BaseCommand):
    help = "Register a provider connection (the identity Revive will insist on at reconnect)."

    def add_arguments(self, parser):
        parser.add_argument("connection_id")
        parser.add_argument("--provider", required=True, choices=[p.value for p in Provider])
        parser.add_argument("--owner-email", required=True)
        parser.add_argument("--subject", required=True, help="Entra: the user's oid; Auth0/OIDC: sub.")
        parser.add_argument("--tenant", default="", help="Entra: tid.")
        parser.add_argument("--issuer", default="", help="Auth0/OIDC: iss.")
        parser.add_argument("--org", default="", help="Auth0: org_id, when the connection belongs to an organization.")
        parser.add_argument("--name", default="", help="A display name.")
        parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                            help="The namespace whose worker keys use it (created if missing; default: default).")

    def handle(self, *args, **o):
        if not re.fullmatch(r"[A-Za-z0-9_.:/@-]{1,200}", o["connection_id"]):
            self.stderr.write("VALIDATION_ERROR: a connection id is 1-200 of A-Z a-z 0-9 _ . : / @ - (as the worker API "
                              "accepts it).")
            raise SystemExit(2)
        try:
            namespace_ensure(name=o["namespace"], actor="cli")
            conn = connection_create(
                connection_id=qualify(o["namespace"], o["connection_id"]), namespace=o["namespace"], provider=o["provider"], owner_email=o["owner_email"],
                provider_subject=o["subject"], provider_tenant=o["tenant"], provider_issuer=o["issuer"],
                provider_org=o["org"], display_name=o["name"], actor="cli",
            )
        except DomainError as exc:
            self.stderr.write(f"{exc.code}: {exc.message}")
            raise SystemExit(2)
        self.stdout.write(f"Connection {o['connection_id']} ({conn.get_provider_display()}) registered in namespace "
                          f"{o['namespace']!r} at generation {conn.current_generation}.")
