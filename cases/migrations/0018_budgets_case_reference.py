"""On PostgreSQL a case's reference (``CASERV-0001``, from its id) is written by its INSERT: a trigger fills a NULL
reference, and the INSERT returns it (``ReturnedCharField``), so opening a case is one statement, not an INSERT and an
UPDATE. The format is the one ``cases.services.failures._case_open`` writes where there is no trigger."""

from django.db import migrations

import cases.models

FUNCTION = """
CREATE OR REPLACE FUNCTION revive_case_reference() RETURNS trigger AS $$
BEGIN
    IF NEW.reference IS NULL THEN
        NEW.reference := 'CASERV-' || lpad(NEW.id::text, greatest(4, length(NEW.id::text)), '0');
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION)
    schema_editor.execute(
        "CREATE TRIGGER cases_recoverycase_reference BEFORE INSERT ON cases_recoverycase "
        "FOR EACH ROW EXECUTE FUNCTION revive_case_reference();"
    )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP TRIGGER IF EXISTS cases_recoverycase_reference ON cases_recoverycase;")
    schema_editor.execute("DROP FUNCTION IF EXISTS revive_case_reference();")


class Migration(migrations.Migration):
    dependencies = [("cases", "0017_console_list_indexes")]

    operations = [
        migrations.AlterField(
            model_name="recoverycase",
            name="reference",
            field=cases.models.ReturnedCharField(blank=True, max_length=32, null=True, unique=True),
        ),
        migrations.RunPython(forwards, backwards),
    ]
