"""revive_sdk.restate: promise names and the shared resume handler's once-only resolution.

The helper against a real restate-server is in tests/runtimes/test_restate.py."""

import asyncio

import pytest
import restate
from restate.exceptions import TerminalError

from revive_sdk import restate as revive_restate


class FakePromise:
    def __init__(self, store, key, fail_on_resolve=False):
        self.store, self.key, self.fail_on_resolve = store, key, fail_on_resolve

    async def peek(self):
        return self.store.get(self.key)

    async def resolve(self, value):
        if self.fail_on_resolve:
            raise TerminalError("promise already completed", status_code=409)
        self.store[self.key] = value


class FakeSharedContext:
    def __init__(self, store, racing=()):
        self.store, self.racing = store, set(racing)

    def promise(self, key, type_hint=None):
        return FakePromise(self.store, key, fail_on_resolve=key in self.racing)


def handler():
    workflow = restate.Workflow(f"W{id(object())}")
    return revive_restate.install_resume_handler(workflow), workflow


RESUME = {
    "revive": "resume",
    "cases": ["CASERV-0001", "CASERV-0002"],
    "generations": {"conn_a": 2, "conn_b": 5},
    "rejected": {"conn_a": 1, "conn_b": 4},
}


def test_promises_are_keyed_by_connection_and_rejected_generation():
    assert revive_restate.promise_name("conn_microsoft_ops", 1) == "revive:conn_microsoft_ops:g1"
    assert revive_restate.promise_name("conn_microsoft_ops", 2) != revive_restate.promise_name("conn_microsoft_ops", 1)


def test_the_handler_is_a_shared_handler_of_the_workflow():
    fn, workflow = handler()
    assert revive_restate.RESUME_HANDLER in workflow.handlers
    assert workflow.handlers[revive_restate.RESUME_HANDLER].kind == "shared"


def test_each_promise_is_resolved_once():
    fn, _ = handler()
    store = {}
    first = asyncio.run(fn(FakeSharedContext(store), RESUME))
    assert first == {"resolved": ["revive:conn_a:g1", "revive:conn_b:g4"], "already": []}
    assert store["revive:conn_a:g1"] == RESUME
    again = asyncio.run(fn(FakeSharedContext(store), RESUME))
    assert again == {"resolved": [], "already": ["revive:conn_a:g1", "revive:conn_b:g4"]}


def test_a_concurrent_resolution_counts_as_already_resolved():
    fn, _ = handler()
    out = asyncio.run(fn(FakeSharedContext({}, racing={"revive:conn_b:g4"}), RESUME))
    assert out == {"resolved": ["revive:conn_a:g1"], "already": ["revive:conn_b:g4"]}


def test_anything_but_a_revive_resume_is_refused():
    fn, _ = handler()
    with pytest.raises(TerminalError):
        asyncio.run(fn(FakeSharedContext({}), {"hello": "world"}))
