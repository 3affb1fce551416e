from django.core.management.base import BaseCommand

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

    def handle(self, *args, **o):
        try:
            conn = connection_create(
                connection_id=o["connection_id"], provider=o["provider"], owner_email=o["owner_email"],
                provider_subject=o["subject"], provider_tenant=o["tenant"], provider_issuer=o["issuer"],
                provider_org=o["org"], display_name=o["name"], actor="cli",
            )
        except DomainError as exc:
            self.stderr.write(f"{exc.code}: {exc.message}")
            raise SystemExit(2)
        self.stdout.write(f"Connection {conn.pk} ({conn.get_provider_display()}) registered at generation {conn.current_generation}.")
