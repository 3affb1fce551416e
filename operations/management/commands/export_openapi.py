"""Write the worker API's OpenAPI schema where the SDKs read it (``sdk/openapi/worker-api.json``).

The TypeScript SDK's request and response types are generated from that file; its tests fail when the file and
the schema a live server serves differ. After changing the worker API, run ``manage.py export_openapi`` and
commit the file (``--check`` only compares).
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from revive_site.api import worker_api

DEFAULT_PATH = Path(settings.BASE_DIR) / "sdk" / "openapi" / "worker-api.json"


def worker_api_schema_text() -> str:
    """The schema exactly as ``/api/v1/openapi.json`` serves it, pretty-printed for review."""
    schema = worker_api.get_openapi_schema(path_prefix="/api/v1")
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


class Command(BaseCommand):
    help = "Export the worker API's OpenAPI schema to sdk/openapi/worker-api.json (the TypeScript SDK's types come from it)."

    def add_arguments(self, parser):
        parser.add_argument("--output", default=str(DEFAULT_PATH), help="Where to write it (default: %(default)s).")
        parser.add_argument("--check", action="store_true", help="Do not write; exit 1 if the file is out of date.")

    def handle(self, *args, output: str, check: bool, **options):
        path = Path(output)
        text = worker_api_schema_text()
        current = path.read_text() if path.exists() else None
        if check:
            if current != text:
                raise CommandError(f"{path} is out of date: run `manage.py export_openapi` and commit it.")
            self.stdout.write(f"{path} is up to date.")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.stdout.write(f"{'Unchanged' if current == text else 'Wrote'} {path}.")
