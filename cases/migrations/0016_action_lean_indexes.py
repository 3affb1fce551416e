"""The ledger keeps the indexes its reads use and no more: every index is written on each begin, and again on each
commit (the commit's update changes an indexed column, so it is never a heap-only update).

Dropped: the index of ``run`` alone (the unique (run, action key) leads with it) and the three pattern indexes
(``*_like``: LIKE 'prefix%' on the run, the connection and the idempotency key; the ledger is searched by exact
identifiers). The new unique constraint and connection index exist before the old ones go.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0015_action_reconciliations"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="action",
            constraint=models.UniqueConstraint(fields=("idempotency_key",), name="action_idempotency_key_unique"),
        ),
        migrations.AddIndex(
            model_name="action",
            index=models.Index(fields=["connection"], name="action_connection_idx"),
        ),
        migrations.AlterField(
            model_name="action",
            name="idempotency_key",
            field=models.CharField(max_length=64),
        ),
        migrations.AlterField(
            model_name="action",
            name="connection",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="actions",
                to="cases.connection",
            ),
        ),
        migrations.AlterField(
            model_name="action",
            name="run",
            field=models.ForeignKey(
                db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="actions", to="cases.run"
            ),
        ),
    ]
