"""The operator console: its permission and the indexes its case list needs on 100,000 cases.

Its two groups are made by the console app's own migration (``console/0001_console_groups``).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0002_run_resume_claimed_until"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="recoverycase",
            options={"permissions": [("operate_case", "Can act on recovery cases in the operator console")]},
        ),
        migrations.AddIndex(
            model_name="recoverycase",
            index=models.Index(fields=["opened_at", "id"], name="case_opened_at_idx"),
        ),
        migrations.AddIndex(
            model_name="recoverycase",
            index=models.Index(
                models.Case(
                    models.When(state="resume_failed", then=models.Value(0)),
                    models.When(state="awaiting_approval", then=models.Value(1)),
                    models.When(state="reconciling", then=models.Value(2)),
                    models.When(state="opened", then=models.Value(3)),
                    models.When(state="awaiting_owner", then=models.Value(4)),
                    models.When(state="reauthorized", then=models.Value(5)),
                    models.When(state="resuming", then=models.Value(6)),
                    models.When(state="resumed", then=models.Value(7)),
                    models.When(state="abandoned", then=models.Value(8)),
                    models.When(state="closed", then=models.Value(9)),
                    default=models.Value(10),
                    output_field=models.IntegerField(),
                ),
                models.F("opened_at"),
                models.F("id"),
                name="case_urgency_age_idx",
            ),
        ),
    ]
