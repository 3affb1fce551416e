"""The console's two groups, Revive operators and Revive auditors (``console.access``).

They were made by ``cases/0003_case_console`` while the console lived in ``cases``; on a database that already has
them this sets their permissions exactly again, as ``manage.py revive_console_groups`` does.
"""

from django.db import migrations


def create_console_groups(apps, schema_editor):
    from console.access import sync_console_groups

    sync_console_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0003_case_console"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_console_groups, migrations.RunPython.noop)]
