"""The protected sends of the fault suite's workflows, with the points where a trial injects its fault.

Every runtime's workflow is the same: ``send_1`` → ``send_2`` → ``send_3`` → finished, each send a protected
action on one connection whose effect lands at the counting service (``World.effect``: every effect is a line,
duplicates included). The trial's instructions travel in the workflow input (``faults``):

* ``revoke_at``: the credential dies right before this send leases it (the run parks there);
* a *hold* (``World.hold``) stops the process at ``before_execute.<send>`` / ``after_accept.<send>`` and marks
  its pid, so the harness can SIGKILL exactly that process there, or restart a server meanwhile;
* ``timeout.<send>`` (a flag file): the provider accepts the message and the call then times out (ambiguous).

Each run has a world directory of its own (``<REVIVE_TEST_WORLD>/<run id>``), so nothing grows with the number
of trials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.runtimes.support.world import World

SENDS = ("send_1", "send_2", "send_3")
CHECKPOINTS = {"send_1": "01", "send_2": "02", "send_3": "03"}


def world_for(run_id: str) -> World:
    return World(Path(os.environ["REVIVE_TEST_WORLD"]) / run_id)


def take_flag(world: World, name: str) -> bool:
    """Consume a one-shot flag file of the world; True if it was there."""
    try:
        (world.root / "gates" / name).unlink()
        return True
    except FileNotFoundError:
        return False


def before_lease(world: World, *, run_id: str, conn: str, key: str, faults: dict) -> None:
    if faults.get("revoke_at") == key and take_flag(world, "revoke"):
        world.revoke(conn)
        world.mark("revoked", run_id=run_id, at=key)


def execute(world: World, ctx: Any, *, run_id: str, key: str) -> dict:
    world.pause_if_held(f"before_execute.{key}", run_id)
    message = world.effect(key, run_id=run_id, idempotency_key=ctx.idempotency_key, credential=ctx.credential)
    world.pause_if_held(f"after_accept.{key}", run_id)
    if take_flag(world, f"timeout.{key}"):
        world.mark("timed_out", run_id=run_id, at=key)
        raise TimeoutError(f"{key}: the provider accepted the message and did not answer in time")
    return message


def reconcile(world: World, ctx: Any, *, conn: str) -> dict | None:
    world.lease(conn)  # asking the provider needs the credential too
    return world.find(ctx.idempotency_key)


def action_kwargs(*, run_id: str, conn: str, key: str, faults: dict) -> dict[str, Any]:
    """The keyword arguments of ``protect_action`` for one send (the SDK's, for every runtime helper)."""
    world = world_for(run_id)

    def credential() -> str:
        before_lease(world, run_id=run_id, conn=conn, key=key, faults=faults)
        return world.lease(conn)

    return dict(
        run_id=run_id,
        checkpoint_id=CHECKPOINTS[key],
        connection_id=conn,
        action_key=key,
        credential=credential,
        execute=lambda ctx: execute(world, ctx, run_id=run_id, key=key),
        reconcile=lambda ctx: reconcile(world, ctx, conn=conn),
    )


def finished(run_id: str, **extra: Any) -> None:
    world_for(run_id).mark("finished", run_id=run_id, **extra)


def reconcile_by_idempotency_key(request) -> Any:
    """The server-side reconciler (``REVIVE_RECONCILERS``): ask the counting service whether the effect exists."""
    from cases.resume import ReconcilerFinding

    found = world_for(request.run_id).find(request.idempotency_key)
    if found is None:
        return ReconcilerFinding(found=False, evidence={"looked_up": request.idempotency_key})
    return ReconcilerFinding(
        found=True,
        evidence={"looked_up": request.idempotency_key, "message_id": found["id"]},
        result=found,
        external_ref=found["id"],
    )
