"""The lab's side of ``--runtime langgraph-server`` without a server: what it says when the Agent Server's venv is
missing, and the credential desk's refusals (the run itself: ``test_recovery_lab_command.py``)."""

import httpx
import pytest
from django.core.management import CommandError, call_command

from lab import langgraph_server


def test_without_the_agent_servers_venv_the_lab_says_how_to_make_it_and_exits_2(monkeypatch, tmp_path):
    monkeypatch.setattr(langgraph_server, "LANGGRAPH", tmp_path / "absent" / "bin" / "langgraph")
    for runtime in ("langgraph-server", "all"):
        with pytest.raises(CommandError) as refused:
            call_command("recovery_lab", "--runtime", runtime)
        assert refused.value.returncode == 2
        assert "scripts/setup --test" in str(refused.value) and ".venv-lgserver" in str(refused.value)
    with pytest.raises(RuntimeError, match="scripts/setup --test"):
        langgraph_server.AgentServer.start(tmp_path)


def test_the_credential_desk_answers_only_its_secret_and_only_for_the_scenarios_connections():
    desk = langgraph_server.CredentialDesk()
    try:

        def ask(authorization: str, connection_id: str = "conn_x") -> httpx.Response:
            return httpx.post(
                desk.url, json={"connection_id": connection_id}, headers={"Authorization": authorization}, timeout=10
            )

        assert ask("").status_code == 401
        assert ask(f"Bearer {desk.secret[:-1]}x").status_code == 401
        unknown = ask(f"Bearer {desk.secret}")
        assert unknown.status_code == 404 and unknown.json()["error"]["body"]["error"] == "unknown_connection"
        assert desk.secret not in unknown.text
    finally:
        desk.stop()
