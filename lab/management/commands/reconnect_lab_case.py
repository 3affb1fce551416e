"""Open an owner case for the lab: a connection owned by the lab provider's ``ada``, a run parked on a dead grant,
and the reconnect e-mail (printed by the console e-mail backend of the embedded default)."""

from __future__ import annotations

import secrets

from django.core.management.base import BaseCommand
from django.db import transaction

from cases import services
from cases.models import Runtime

CONTOSO_TID = "3f6b1c2e-8d4a-4f1b-9c7e-2a5d0e9b1c01"  # as seeded by `idp_seed`
ADA_OID = "b1e2c3d4-5a6b-4c7d-8e9f-0a1b2c3d4e01"
DEAD_GRANT = {
    "status": 400,
    "body": {
        "error": "invalid_grant",
        "error_codes": [700082],
        "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
    },
}


class Command(BaseCommand):
    help = "Park a lab run on a dead grant so that its owner gets a reconnect link (see docs/reconnect.md)."

    def add_arguments(self, parser):
        parser.add_argument("--owner-email", default="ada@contoso.example")
        parser.add_argument("--tenant", default=CONTOSO_TID, help="The connection's Entra tenant (tid).")
        parser.add_argument("--subject", default=ADA_OID, help="The connection's Entra object id (oid).")

    def handle(self, *args, **o):
        suffix = secrets.token_hex(3)
        connection_id, run_id = f"conn_lab_{suffix}", f"run_lab_{suffix}"
        with transaction.atomic():
            services.connection_create(
                connection_id=connection_id,
                provider="entra",
                owner_email=o["owner_email"],
                provider_subject=o["subject"],
                provider_tenant=o["tenant"],
                display_name="Lab mailbox",
                actor="cli",
            )
            services.run_register(
                run_id=run_id,
                runtime=Runtime.LANGGRAPH,
                runtime_ref={"thread_id": run_id},
                workflow_name="Nightly executive briefing",
                actor="cli",
            )
            services.checkpoint_record(run_id=run_id, checkpoint_id="05", label="05 / prepare brief", actor="cli")
            services.action_begin(
                run_id=run_id,
                checkpoint_id="05",
                connection_id=connection_id,
                action_key="send_exec_05",
                generation=1,
                actor="cli",
            )
        answer = services.action_fail(
            run_id=run_id, action_key="send_exec_05", generation=1, provider_error=DEAD_GRANT, actor="cli"
        )
        self.stdout.write(
            f"Case {answer.case_reference} parked run {run_id} on connection {connection_id} (generation 1)."
        )
        self.stdout.write(
            "The owner's reconnect e-mail went out through EMAIL_BACKEND (printed above with the console backend)."
        )
