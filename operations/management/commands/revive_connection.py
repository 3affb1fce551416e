import re

from django.core.management.base import BaseCommand

from cases.forms import ConnectionForm
from cases.models import DEFAULT_NAMESPACE
from cases.namespaces import namespace_ensure, qualify
from cases.services import connection_create
from classifier import Provider
from revive_site.errors import DomainError

# the command's options, by the form field each one fills
OPTION_OF_FIELD = {
    "id": "connection_id",
    "provider": "--provider",
    "owner_email": "--owner-email",
    "provider_subject": "--subject",
    "provider_tenant": "--tenant",
    "provider_issuer": "--issuer",
    "provider_org": "--org",
    "display_name": "--name",
    "owner_name": "--owner-name",
    "upstream_provider": "--upstream",
    "broker_integration": "--integration",
    "broker_connection": "--broker-connection",
    "broker_account": "--account",
}


class Command(BaseCommand):
    help = (
        "Register a provider connection (the identity Revive will insist on at reconnect). Entra: --subject is "
        "the user's object id (oid) and --tenant the tenant id (tid), both GUIDs; Auth0/OIDC: --issuer (iss, a "
        "URL) and --subject (sub)."
    )

    def add_arguments(self, parser):
        parser.add_argument("connection_id")
        parser.add_argument("--provider", required=True, choices=[p.value for p in Provider])
        parser.add_argument("--owner-email", required=True)
        parser.add_argument("--subject", required=True, help="Entra: the user's oid (a GUID); Auth0/OIDC: sub.")
        parser.add_argument("--tenant", default="", help="Entra: tid (a GUID).")
        parser.add_argument("--issuer", default="", help="Auth0/OIDC: iss (an https URL).")
        parser.add_argument("--org", default="", help="Auth0: org_id, when the connection belongs to an organization.")
        parser.add_argument("--name", default="", help="A display name.")
        parser.add_argument("--owner-name", default="", help="The owner's name, for the reconnect message.")
        parser.add_argument(
            "--namespace",
            default=DEFAULT_NAMESPACE,
            help="The namespace whose worker keys use it (created if missing; default: default).",
        )
        broker = parser.add_argument_group(
            "broker-held connections (--provider nango or scalekit): Revive stores no token"
        )
        broker.add_argument(
            "--upstream",
            default="",
            choices=["", "entra", "auth0", "oidc"],
            help="Whose identity the broker holds; decides the identity rule (entra: tid+oid, else iss+sub).",
        )
        broker.add_argument(
            "--integration", default="", help="Nango: the integration id (providerConfigKey). Scalekit: the connector."
        )
        broker.add_argument(
            "--broker-connection", default="", help="Nango: the connection id. Scalekit: the identifier."
        )
        broker.add_argument("--account", default="", help="Scalekit: the connected account id.")

    def handle(self, *args, **o):
        if not re.fullmatch(r"[A-Za-z0-9_.:/@-]{1,200}", o["connection_id"]):
            self.stderr.write(
                "VALIDATION_ERROR: a connection id is 1-200 of A-Z a-z 0-9 _ . : / @ - (as the worker API accepts it)."
            )
            raise SystemExit(2)
        form = ConnectionForm(
            data={
                "id": o["connection_id"],
                "provider": o["provider"],
                "owner_email": o["owner_email"],
                "provider_subject": o["subject"],
                "provider_tenant": o["tenant"],
                "provider_issuer": o["issuer"],
                "provider_org": o["org"],
                "display_name": o["name"],
                "owner_name": o["owner_name"],
                "upstream_provider": o["upstream"],
                "broker_integration": o["integration"],
                "broker_connection": o["broker_connection"],
                "broker_account": o["account"],
            }
        )
        if not form.is_valid():
            for field, messages in form.errors.items():
                option = OPTION_OF_FIELD.get(field, field)
                for message in messages:
                    self.stderr.write(
                        f"INVALID_INPUT {option}: {message}" if field != "__all__" else f"INVALID_INPUT: {message}"
                    )
            raise SystemExit(2)
        data = form.cleaned_data
        try:
            namespace_ensure(name=o["namespace"], actor="cli")
            conn = connection_create(
                connection_id=qualify(o["namespace"], data["id"]),
                namespace=o["namespace"],
                provider=data["provider"],
                owner_email=data["owner_email"],
                provider_subject=data["provider_subject"],
                provider_tenant=data["provider_tenant"],
                provider_issuer=data["provider_issuer"],
                provider_org=data["provider_org"],
                display_name=data["display_name"],
                owner_name=data["owner_name"],
                upstream_provider=data["upstream_provider"],
                broker_integration=data["broker_integration"],
                broker_connection=data["broker_connection"],
                broker_account=data["broker_account"],
                actor="cli",
            )
        except DomainError as exc:
            self.stderr.write(f"{exc.code}: {exc.message} {exc.data.get('fields') or ''}".rstrip())
            raise SystemExit(2) from None
        self.stdout.write(
            f"Connection {o['connection_id']} ({conn.get_provider_display()}) registered in namespace "
            f"{o['namespace']!r} at generation {conn.current_generation}."
        )
