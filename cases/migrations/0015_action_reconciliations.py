"""Each action keeps its settlings (``Action.reconciliations``): the resume approval policy and the four-eyes rule
read them instead of the audit log. The actions of open cases' runs are filled once from the audit log."""

from django.db import migrations, models

OPEN_CASE_STATES = (
    "opened",
    "awaiting_owner",
    "reauthorized",
    "reconciling",
    "awaiting_approval",
    "resume_failed",
    "resuming",
)
RECONCILED_ACTIONS = ("action.reconciled_committed", "action.reconciled_absent")


def backfill(apps, schema_editor):
    Action = apps.get_model("cases", "Action")
    CaseRun = apps.get_model("cases", "CaseRun")
    AuditEvent = apps.get_model("audit", "AuditEvent")
    run_ids = set(CaseRun.objects.filter(case__state__in=OPEN_CASE_STATES).values_list("run_id", flat=True))
    settlings = {}  # (run_id, action_key) -> its settlings, oldest first
    for run_id, entity_id, actor, arguments, occurred_at in (
        AuditEvent.objects.filter(run_id__in=run_ids, entity_type="action", action__in=RECONCILED_ACTIONS)
        .order_by("occurred_at", "id")
        .values_list("run_id", "entity_id", "actor", "arguments", "occurred_at")
        .iterator()
    ):
        key = (run_id, entity_id[len(run_id) + 1 :])
        settlings.setdefault(key, []).append(
            {"actor": actor, "at": occurred_at.isoformat(), "evidence": (arguments or {}).get("evidence")}
        )
    for (run_id, action_key), entries in settlings.items():
        Action.objects.filter(run_id=run_id, action_key=action_key).update(reconciliations=entries)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0006_console_search_indexes"),
        ("cases", "0014_run_runtime_langgraph_server"),
    ]

    operations = [
        migrations.AddField(
            model_name="action",
            name="reconciliations",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="Every settling of this action, oldest first: who (actor), when (at, ISO 8601) and with "
                "what evidence. The resume approval policy and the four-eyes rule read it (a re-execution after "
                "reconciled_absent keeps the earlier ones here).",
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
