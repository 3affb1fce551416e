"""The committed worker API schema (sdk/openapi/worker-api.json) is the server's: the TypeScript SDK's types come from it."""

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from operations.management.commands.export_openapi import DEFAULT_PATH


def test_committed_schema_is_the_live_servers(client):
    served = client.get("/api/v1/openapi.json").json()
    assert json.loads(DEFAULT_PATH.read_text()) == served, (
        "sdk/openapi/worker-api.json is stale: run `.venv/bin/python manage.py export_openapi` and commit it"
    )


def test_check_refuses_a_stale_file(tmp_path: Path):
    stale = tmp_path / "worker-api.json"
    stale.write_text("{}\n")
    with pytest.raises(CommandError, match="out of date"):
        call_command("export_openapi", "--check", "--output", str(stale))
    call_command("export_openapi", "--output", str(stale))
    call_command("export_openapi", "--check", "--output", str(stale))
    assert json.loads(stale.read_text())["info"]["title"] == "Revive worker API"
