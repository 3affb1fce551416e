from django.core.management.base import BaseCommand

from cases.services import reap_stale_actions


class Command(BaseCommand):
    help = "Mark actions left executing past their lock timeout as ambiguous, so they must be reconciled."

    def handle(self, *args, **options):
        reaped = reap_stale_actions(actor="cli:reaper")
        for action in reaped:
            self.stdout.write(f"ambiguous: {action.run_id} / {action.action_key}")
        self.stdout.write(f"{len(reaped)} action(s) marked ambiguous.")
