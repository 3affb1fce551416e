import pytest

from tests.conftest import make_connection, make_run, token_vault_standin, worker_key  # noqa: F401  (shared fixtures)


class MailSink:
    """The side effect under test: accepts messages, remembers them by idempotency key, counts every one."""

    def __init__(self):
        self.accepted: list[dict] = []

    def send(self, to: str, idempotency_key: str) -> dict:
        message = {"id": f"msg-{len(self.accepted) + 1}", "to": to, "idempotency_key": idempotency_key}
        self.accepted.append(message)
        return message

    def find(self, idempotency_key: str) -> dict | None:
        return next((m for m in self.accepted if m["idempotency_key"] == idempotency_key), None)


@pytest.fixture
def sink():
    return MailSink()


@pytest.fixture
def revive_url(live_server):
    return live_server.url
