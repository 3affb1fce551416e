from django.apps import apps
from django.core.management.base import BaseCommand

from console.access import sync_console_groups


class Command(BaseCommand):
    help = "Create or repair the operator console groups (Revive operators, Revive auditors). Safe to repeat."

    def handle(self, *args, **options):
        for name, codenames in sync_console_groups(apps).items():
            self.stdout.write(f"{name}: {', '.join(codenames)}")
