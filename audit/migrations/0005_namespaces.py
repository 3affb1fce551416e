"""Run and connection ids of audit events as stored: qualified by namespace (cases.namespaces)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0004_auditevent_trace_id"),
    ]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="connection_id",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="run_id",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
    ]
