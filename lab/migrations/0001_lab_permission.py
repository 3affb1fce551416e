from django.db import migrations


def forwards(apps, schema_editor):
    from lab.access import sync_lab_group

    sync_lab_group(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
