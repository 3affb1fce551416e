from django.core.management.base import BaseCommand, CommandError

from cases.models import ApiKey
from cases.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a worker (or an operator). The key is printed once and never stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A unique name, e.g. the worker fleet's name.")
        parser.add_argument("--role", choices=[r.value for r in ApiKey.Role], default=ApiKey.Role.WORKER)
        parser.add_argument("--system-operate", action="store_true", help="Allow the operator recovery routes.")
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, *args, name, role, system_operate, quiet, **options):
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"An API key named {name!r} already exists; choose another name.")
        key, raw = api_key_create(name=name, role=role, system_operate=system_operate, actor="cli")
        if quiet:
            self.stdout.write(raw)
            return
        self.stdout.write(f"Created {key.role} key {key.name!r}. Store it now; it cannot be shown again:\n\n  {raw}\n")
