"""Revive SDK clients for worker code in the runtime tests, configured from the environment of the process."""

from __future__ import annotations

import asyncio
import os
import threading

from revive_sdk import AsyncRevive, Revive, RunParked

from .world import World

_local = threading.local()


def _park_hold(world: World, run_id: str) -> None:
    world.mark("parked", run_id=run_id)
    world.pause_if_held("park", run_id)


class HeldRevive(Revive):
    """A client whose run can be held right after Revive parks it (to deliver a resume *before* the wait)."""

    def protect_action(self, **kwargs):
        try:
            return super().protect_action(**kwargs)
        except RunParked:
            _park_hold(World(), kwargs["run_id"])
            raise


class HeldAsyncRevive(AsyncRevive):
    async def protect_action(self, **kwargs):
        try:
            return await super().protect_action(**kwargs)
        except RunParked:
            await asyncio.to_thread(_park_hold, World(), kwargs["run_id"])
            raise


def revive() -> HeldRevive:
    """One client per thread of this process (graph nodes run on LangGraph's thread pool)."""
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = HeldRevive(os.environ["REVIVE_URL"], os.environ["REVIVE_API_KEY"])
    return client


def async_revive() -> HeldAsyncRevive:
    return HeldAsyncRevive(os.environ["REVIVE_URL"], os.environ["REVIVE_API_KEY"])
