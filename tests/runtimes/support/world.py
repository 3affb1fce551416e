"""The outside world of the runtime tests, shared by every process of a test through one directory.

* ``Effects`` is the provider the protected actions mutate: every effect is
  appended as one line and *never* de-duplicated, so a repeated action shows up
  as two lines. ``find`` is what a reconciler asks the provider.
* ``Vault`` hands out credentials for connections; a revoked connection's
  ``lease`` raises the provider's dead-grant answer (``AADSTS700082``).
* ``Gates`` let a test hold a worker at a chosen point (a file that appears).
* ``Marks`` record that a step ran, where (pid) and when.

The directory comes from ``REVIVE_TEST_WORLD`` in worker processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from revive_sdk import ProviderError

DEAD_GRANT = {
    "status": 400,
    "body": {
        "error": "invalid_grant",
        "error_description": "AADSTS700082: The refresh token has expired due to inactivity.",
        "error_codes": [700082],
    },
    "headers": {"Content-Type": "application/json"},
}


class World:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ["REVIVE_TEST_WORLD"])
        for sub in ("revoked", "gates", "crash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- append-only logs -----------------------------------------------------

    def _append(self, name: str, record: dict[str, Any]) -> None:
        line = (json.dumps({**record, "pid": os.getpid(), "t": time.time()}, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.root / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- the provider's side effects -----------------------------------------

    def effect(self, name: str, *, run_id: str, idempotency_key: str, credential: str | None = None) -> dict[str, Any]:
        """Perform the remote effect; crash right after it when the test armed a crash for it."""
        message = {
            "effect": name,
            "run_id": run_id,
            "idempotency_key": idempotency_key,
            "id": f"msg-{name}-{idempotency_key[-8:]}",
        }
        self._append("effects.jsonl", {**message, "credential": credential})
        if (self.root / "crash" / f"{run_id}.{name}").exists():
            (self.root / "crash" / f"{run_id}.{name}").unlink()
            os._exit(137)  # the worker dies between the remote effect and the commit
        return message

    def effects(self, name: str | None = None, *, run_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self._read("effects.jsonl")
            if (name is None or e["effect"] == name) and (run_id is None or e["run_id"] == run_id)
        ]

    def find(self, idempotency_key: str) -> dict[str, Any] | None:
        found = [e for e in self._read("effects.jsonl") if e["idempotency_key"] == idempotency_key]
        if not found:
            return None
        e = found[0]
        return {"effect": e["effect"], "run_id": e["run_id"], "idempotency_key": e["idempotency_key"], "id": e["id"]}

    def arm_crash(self, run_id: str, effect: str) -> None:
        (self.root / "crash" / f"{run_id}.{effect}").touch()

    # -- credentials ------------------------------------------------------------

    def revoke(self, connection_id: str) -> None:
        (self.root / "revoked" / connection_id).touch()

    def restore(self, connection_id: str) -> None:
        (self.root / "revoked" / connection_id).unlink(missing_ok=True)

    def lease(self, connection_id: str) -> str:
        if (self.root / "revoked" / connection_id).exists():
            raise ProviderError(DEAD_GRANT["status"], DEAD_GRANT["body"], DEAD_GRANT["headers"])
        return f"access-token-for-{connection_id}"

    # -- gates and marks ----------------------------------------------------------

    def open_gate(self, name: str) -> None:
        (self.root / "gates" / name).touch()

    def wait_gate(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.root / "gates" / name).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {name} never opened")
            time.sleep(0.02)

    def hold(self, point: str, run_id: str) -> None:
        """Arm a hold: the run's worker stops at ``point`` until ``open_gate(f"{point}.{run_id}")``."""
        (self.root / "gates" / f"hold.{point}.{run_id}").touch()

    def hold_after_park(self, run_id: str) -> None:
        """The run's worker stops right after Revive parks it, before it reaches its runtime's wait."""
        self.hold("park", run_id)

    def pause_if_held(self, point: str, run_id: str) -> None:
        if (self.root / "gates" / f"hold.{point}.{run_id}").exists():
            self.mark(f"held.{point}", run_id=run_id)
            self.wait_gate(f"{point}.{run_id}")

    def mark(self, what: str, *, run_id: str, **extra: Any) -> None:
        self._append("marks.jsonl", {"what": what, "run_id": run_id, **extra})

    def marks(self, what: str | None = None, *, run_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in self._read("marks.jsonl")
            if (what is None or m["what"] == what) and (run_id is None or m["run_id"] == run_id)
        ]


def reconcile_by_idempotency_key(request) -> Any:
    """A server-side reconciler (``REVIVE_RECONCILERS``): ask the provider whether the effect exists."""
    from cases.resume import ReconcilerFinding

    found = World().find(request.idempotency_key)
    if found is None:
        return ReconcilerFinding(found=False, evidence={"looked_up": request.idempotency_key})
    return ReconcilerFinding(
        found=True,
        evidence={"looked_up": request.idempotency_key, "message_id": found["id"]},
        result=found,
        external_ref=found["id"],
    )
