"""Namespaces: every connection, run, case and API key belongs to one; everything that exists moves to ``default``.

Connection and run ids grow to hold a namespace-qualified id (``cases.namespaces``); ids in ``default`` stay as
they are, so no existing row is rewritten.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def create_default_namespace(apps, schema_editor):
    apps.get_model("cases", "Namespace").objects.get_or_create(
        name="default", defaults={"description": "Everything created before namespaces, and every key without one."}
    )


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0004_refresh_claim_token_vault"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="connection",
            name="id",
            field=models.CharField(max_length=300, primary_key=True, serialize=False),
        ),
        migrations.AlterField(
            model_name="run",
            name="id",
            field=models.CharField(max_length=300, primary_key=True, serialize=False),
        ),
        migrations.CreateModel(
            name="Namespace",
            fields=[
                ("name", models.SlugField(max_length=63, primary_key=True, serialize=False)),
                ("description", models.CharField(blank=True, default="", max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "operators",
                    models.ManyToManyField(
                        blank=True,
                        help_text="Console users limited to this namespace (and any other they are listed in).",
                        related_name="revive_namespaces",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.RunPython(create_default_namespace, migrations.RunPython.noop),
        migrations.AddField(
            model_name="apikey",
            name="namespace",
            field=models.ForeignKey(
                default="default",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="api_keys",
                to="cases.namespace",
            ),
        ),
        migrations.AddField(
            model_name="connection",
            name="namespace",
            field=models.ForeignKey(
                default="default",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="connections",
                to="cases.namespace",
            ),
        ),
        migrations.AddField(
            model_name="recoverycase",
            name="namespace",
            field=models.ForeignKey(
                default="default",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="cases",
                to="cases.namespace",
            ),
        ),
        migrations.AddField(
            model_name="run",
            name="namespace",
            field=models.ForeignKey(
                default="default",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="runs",
                to="cases.namespace",
            ),
        ),
    ]
