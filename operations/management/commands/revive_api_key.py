from django.core.management.base import BaseCommand, CommandError

from cases.models import DEFAULT_NAMESPACE, ApiKey
from cases.namespaces import namespace_ensure
from cases.services import api_key_create
from revive_site.errors import DomainError


class Command(BaseCommand):
    help = "Create an API key for a worker (or an operator). The key is printed once and never stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A unique name, e.g. the worker fleet's name.")
        parser.add_argument("--role", choices=[r.value for r in ApiKey.Role], default=ApiKey.Role.WORKER)
        parser.add_argument("--system-operate", action="store_true", help="Allow the operator recovery routes.")
        parser.add_argument(
            "--namespace",
            default=DEFAULT_NAMESPACE,
            help="The namespace a worker key sees and acts in (created if missing; default: default).",
        )
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, *args, name, role, system_operate, namespace, quiet, **options):
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"An API key named {name!r} already exists; choose another name.")
        try:
            namespace_ensure(name=namespace, actor="cli")
        except DomainError as exc:
            raise CommandError(exc.message) from None
        key, raw = api_key_create(name=name, role=role, system_operate=system_operate, actor="cli", namespace=namespace)
        if quiet:
            self.stdout.write(raw)
            return
        self.stdout.write(
            f"Created {key.role} key {key.name!r} in namespace {namespace!r}. Store it now; it cannot be shown again:\n\n  {raw}\n"
        )
