"""The conformance suite (``sdk/conformance/*.json``) run by the Python SDK against a live server.

The TypeScript SDK runs the same files (``sdk/typescript/test/conformance.test.ts``); the format is described in
``sdk/conformance/README.md``. Server-side steps (register a connection, the owner's reconnect) go through
``tests/conformance/ops.py``, which both runners share.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from revive_sdk import ProviderError, Revive, ReviveError
from tests.conformance import ops

pytestmark = pytest.mark.django_db(transaction=True)

CONFORMANCE = Path(__file__).resolve().parents[2] / "conformance"
SCENARIOS = sorted(CONFORMANCE.glob("[0-9][0-9]_*.json"))
PROVIDER_ERRORS = json.loads((CONFORMANCE / "provider_errors.json").read_text())
CASE_ID = re.compile(r"^CASERV-\d+$")


class CallbackCrashed(Exception):
    """What a scenario's callback throws when it ``crash``es: the SDK must let it through."""


class MailSink:
    """The side effect: every accepted message, findable by its idempotency key."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, subject: str, idempotency_key: str) -> dict[str, Any]:
        message = {"id": f"msg-{len(self.messages) + 1}", "subject": subject}
        self.messages.append({**message, "idempotency_key": idempotency_key})
        return message

    def find(self, idempotency_key: str) -> dict[str, Any] | None:
        return next(
            (
                {"id": m["id"], "subject": m["subject"]}
                for m in self.messages
                if m["idempotency_key"] == idempotency_key
            ),
            None,
        )


class ScenarioRun:
    def __init__(self, scenario: dict[str, Any], client: Revive) -> None:
        self.scenario = scenario
        self.client = client
        self.nonce = uuid.uuid4().hex[:8]
        self.sink = MailSink()
        self.keys_seen: dict[str, set[str]] = {}
        self.last_parked: str | None = None
        self.run_id = self.name("run")

    def name(self, local: str) -> str:
        return f"{local}.{self.nonce}"

    def resolve(self, value: Any) -> Any:
        return self.last_parked if value == "last_parked" else value

    def start(self) -> None:
        for connection in self.scenario["connections"]:
            ops.connection_create(connection_id=self.name(connection))
        self.client.register_run(
            run_id=self.run_id, runtime="langgraph", workflow_name="Conformance", runtime_ref={"thread_id": self.run_id}
        )

    def step(self, index: int, step: dict[str, Any]) -> None:
        where = f"step {index}"
        if "protect" in step:
            self.protect(step["protect"], step["expect"], where)
        elif "reconnect" in step:
            ops.reconnect(case_id=self.resolve(step["reconnect"]))
        elif "lease" in step:
            lease = self.client.lease(self.name(step["lease"]))
            for field, want in step["expect"].items():
                assert lease[field] == self.resolve(want), f"{where}: lease {field}"
        elif "status" in step:
            self.check_status(step["status"], where)
        else:
            raise AssertionError(f"{where}: unknown step {step}")

    def protect(self, spec: dict[str, Any], expect: dict[str, Any], where: str) -> None:
        calls: Counter[str] = Counter()
        seen: dict[str, Any] = {}
        action = spec["action"]

        def provider_error(name: str) -> ProviderError:
            e = PROVIDER_ERRORS[name]
            return ProviderError(e["status"], e["body"], e["headers"])

        credential_spec = spec.get("credential", {"returns": "token"})

        def credential():
            calls["credential"] += 1
            if "provider_error" in credential_spec:
                raise provider_error(credential_spec["provider_error"])
            return credential_spec["returns"]

        def execute(ctx):
            calls["execute"] += 1
            seen.update(credential=ctx.credential, generation=ctx.generation)
            self.keys_seen.setdefault(action, set()).add(ctx.idempotency_key)
            behaviour = spec["execute"]
            if "provider_error" in behaviour:
                raise provider_error(behaviour["provider_error"])
            if "crash" in behaviour:
                raise CallbackCrashed(behaviour["crash"])
            if "send_then_crash" in behaviour:
                self.sink.send(behaviour["send_then_crash"]["subject"], ctx.idempotency_key)
                raise CallbackCrashed("the provider's answer was lost")
            return self.sink.send(behaviour["send"]["subject"], ctx.idempotency_key)

        def reconcile(ctx):
            calls["reconcile"] += 1
            self.keys_seen.setdefault(action, set()).add(ctx.idempotency_key)
            return self.sink.find(ctx.idempotency_key)

        connection = self.name(spec.get("connection", self.scenario["connections"][0]))
        try:
            result = self.client.protect_action(
                run_id=self.run_id,
                checkpoint_id=spec.get("checkpoint", "05"),
                connection_id=connection,
                action_key=action,
                credential=credential,
                execute=execute,
                reconcile=reconcile if "reconcile" in spec else None,
                params=spec.get("params"),
                generation=spec.get("generation"),
            )
        except (CallbackCrashed, ReviveError, Exception) as exc:  # noqa: B014  (every signal is checked below)
            self.check_raised(exc, expect, where)
        else:
            assert "raises" not in expect, f"{where}: expected {expect['raises']}, got result {result!r}"
            assert result == expect["returns"], f"{where}: result"
        for callback, count in expect.get("calls", {}).items():
            assert calls[callback] == count, f"{where}: {callback} called {calls[callback]} times, expected {count}"
        for field, want in expect.get("seen", {}).items():
            assert seen.get(field) == want, f"{where}: execute saw {field}={seen.get(field)!r}"

    def check_raised(self, exc: BaseException, expect: dict[str, Any], where: str) -> None:
        want = expect.get("raises")
        if want is None:
            raise exc
        if want == "callback":
            assert isinstance(exc, CallbackCrashed), f"{where}: expected the callback's own error, got {exc!r}"
            return
        assert type(exc).__name__ == want, f"{where}: expected {want}, got {exc!r}"
        if want == "RunParked":
            assert CASE_ID.match(exc.case_id), f"{where}: case id {exc.case_id!r}"
            if expect.get("case_id"):
                assert exc.case_id == self.resolve(expect["case_id"]), f"{where}: joined another case"
            self.last_parked = exc.case_id
        for field in ("generation", "current_generation", "retry_after", "code", "status"):
            if field in expect:
                assert getattr(exc, field) == expect[field], f"{where}: {want}.{field} = {getattr(exc, field)!r}"

    def check_status(self, want: dict[str, Any], where: str) -> None:
        status = self.client.recovery_status(self.run_id)
        if "run_state" in want:
            assert status["state"] == want["run_state"], f"{where}: run state"
        if "actions" in want:
            states = {a["action_key"]: a["state"] for a in status["actions"]}
            assert states == want["actions"], f"{where}: action states"
        if "cases" in want:
            assert [c["state"] for c in status["cases"]] == want["cases"], f"{where}: case states"
        if "blocking" in want:
            assert any(c["blocking"] for c in status["cases"]) == want["blocking"], f"{where}: blocking"

    def finish(self) -> None:
        status = self.client.recovery_status(self.run_id)
        ledger = {a["action_key"]: a["idempotency_key"] for a in status["actions"]}
        for action, keys in self.keys_seen.items():
            assert keys == {ledger[action]}, f"callbacks of {action} saw keys {keys}, the ledger has {ledger[action]}"
        per_key = Counter(m["idempotency_key"] for m in self.sink.messages)
        assert all(n == 1 for n in per_key.values()), f"duplicate effects: {per_key}"
        assert len(self.sink.messages) == self.scenario["effects"], "effects"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_conformance(path, live_server, worker_key):
    scenario = json.loads(path.read_text())
    with Revive(live_server.url, worker_key) as client:
        run = ScenarioRun(scenario, client)
        run.start()
        for index, step in enumerate(scenario["steps"]):
            run.step(index, step)
        run.finish()


def test_every_scenario_is_found():
    assert len(SCENARIOS) >= 9
