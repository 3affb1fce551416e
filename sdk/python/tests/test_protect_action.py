"""The SDK against the real worker API, served over HTTP by a live server on loopback."""

import asyncio

import pytest

from cases import services
from revive_sdk import (
    ActionAmbiguous,
    AsyncRevive,
    LeaseFenced,
    ProviderError,
    Reconciliation,
    RetryLater,
    Revive,
    ReviveError,
    ReviveUnavailable,
    RunParked,
)

pytestmark = pytest.mark.django_db(transaction=True)

DEAD = ProviderError(
    400,
    {
        "error": "invalid_grant",
        "error_description": "AADSTS700082: The refresh token has expired.",
        "error_codes": [700082],
    },
    {"Content-Type": "application/json"},
)


@pytest.fixture
def setup(make_connection, make_run, worker_key, revive_url):
    conn = make_connection("conn_microsoft_ops")
    run = make_run("run_7f2")
    client = Revive(revive_url, worker_key)
    yield client, run, conn
    client.close()


def protect(client, sink, **kw):
    args = dict(
        run_id="run_7f2",
        checkpoint_id="05",
        connection_id="conn_microsoft_ops",
        action_key="send_exec_05",
        credential=lambda: "access-token",
        execute=lambda ctx: sink.send("ceo@example.com", ctx.idempotency_key),
        reconcile=lambda ctx: sink.find(ctx.idempotency_key),
    )
    args.update(kw)
    return client.protect_action(**args)


def test_executes_once_then_replays(setup, sink):
    client, *_ = setup
    first = protect(client, sink)
    second = protect(client, sink)
    assert first == second == sink.accepted[0]
    assert len(sink.accepted) == 1


def test_execute_receives_the_credential_and_the_stable_idempotency_key(setup, sink):
    client, *_ = setup
    seen = []
    protect(
        client, sink, execute=lambda ctx: seen.append((ctx.credential, ctx.idempotency_key, ctx.generation)) or "ok"
    )
    assert seen == [("access-token", services.idempotency_key_for(run_id="run_7f2", action_key="send_exec_05"), 1)]


def test_rejected_credential_parks_the_run_then_the_same_run_resumes_without_duplicates(setup, sink):
    client, run, conn = setup

    def rejected():
        raise DEAD

    with pytest.raises(RunParked) as parked:
        protect(client, sink, credential=rejected)
    assert parked.value.case_id.startswith("CASERV-")
    with pytest.raises(RunParked):  # still parked: nothing executes
        protect(client, sink)
    assert sink.accepted == []
    services.case_reauthorize(case_id=parked.value.case_id, actor="owner")
    services.case_resume_begin(case_id=parked.value.case_id, actor="system")
    with pytest.raises(LeaseFenced):
        protect(client, sink, generation=1)  # a stale worker is fenced out
    result = protect(client, sink)
    assert result == protect(client, sink)
    assert len(sink.accepted) == 1
    assert client.recovery_status("run_7f2")["cases"][0]["state"] == "resumed"


def test_timeout_after_the_effect_is_reconciled_not_repeated(setup, sink):
    client, *_ = setup

    def send_then_time_out(ctx):
        sink.send("ceo@example.com", ctx.idempotency_key)
        raise TimeoutError("mail service did not answer")

    with pytest.raises(TimeoutError):
        protect(client, sink, execute=send_then_time_out)
    with pytest.raises(ActionAmbiguous):
        protect(client, sink, reconcile=None)
    result = protect(client, sink)
    assert result == sink.accepted[0]
    assert len(sink.accepted) == 1
    assert protect(client, sink) == result  # now a replay


def test_reconciliation_that_finds_nothing_lets_it_execute_exactly_once_more(setup, sink):
    client, *_ = setup

    def crash_before_sending(ctx):
        raise ConnectionResetError("worker lost the connection")

    with pytest.raises(ConnectionResetError):
        protect(client, sink, execute=crash_before_sending)
    calls = []
    protect(
        client,
        sink,
        reconcile=lambda ctx: calls.append(ctx.idempotency_key)
        or Reconciliation(found=False, evidence={"searched": "sent items"}),
    )
    protect(client, sink)
    assert len(calls) == 1
    assert len(sink.accepted) == 1


def test_transient_failure_asks_to_retry_later(setup, sink):
    client, *_ = setup

    def throttled(ctx):
        raise ProviderError(429, {"error": "throttled"}, {"Retry-After": "3"})

    with pytest.raises(RetryLater) as retry:
        protect(client, sink, execute=throttled)
    assert retry.value.retry_after == 3
    assert protect(client, sink) == sink.accepted[0]


def test_async_client_has_the_same_semantics(setup, sink, worker_key, revive_url):
    async def main():
        async with AsyncRevive(revive_url, worker_key) as client:

            async def rejected():
                raise DEAD

            async def send(ctx):
                return sink.send("ceo@example.com", ctx.idempotency_key)

            kw = dict(
                run_id="run_7f2",
                checkpoint_id="05",
                connection_id="conn_microsoft_ops",
                action_key="async_send",
                execute=send,
                reconcile=lambda ctx: sink.find(ctx.idempotency_key),
            )
            with pytest.raises(RunParked) as parked:
                await client.protect_action(credential=rejected, **kw)
            return parked.value.case_id, client, kw

    case_id, _, _ = asyncio.run(main())
    services.case_reauthorize(case_id=case_id, actor="owner")
    services.case_resume_begin(case_id=case_id, actor="system")

    async def resume():
        async with AsyncRevive(revive_url, worker_key) as client:
            kw = dict(
                run_id="run_7f2",
                checkpoint_id="05",
                connection_id="conn_microsoft_ops",
                action_key="async_send",
                execute=lambda ctx: sink.send("ceo@example.com", ctx.idempotency_key),
            )
            return await client.protect_action(**kw), await client.protect_action(**kw)

    a, b = asyncio.run(resume())
    assert a == b and len(sink.accepted) == 1


def test_bad_key_and_unreachable_server_raise_clear_errors(setup, sink, revive_url):
    with Revive(revive_url, "rvk_not_a_key") as bad, pytest.raises(ReviveError) as err:
        protect(bad, sink)
    assert err.value.code == "AUTHENTICATION_REQUIRED" and err.value.status == 401
    with Revive("http://127.0.0.1:9", "k", timeout=2) as down, pytest.raises(ReviveUnavailable):
        protect(down, sink)
    assert sink.accepted == []


def test_register_run_and_checkpoint(setup):
    client, *_ = setup
    out = client.register_run(
        run_id="run_new", runtime="temporal", workflow_name="wf", runtime_ref={"workflow_id": "w", "run_id": "r"}
    )
    assert out["state"] == "active"
    cp = client.record_checkpoint(run_id="run_new", checkpoint_id="01", label="01 / collect")
    assert cp["label"] == "01 / collect"


def test_a_long_execute_keeps_its_short_lock_alive_and_others_are_told_when_to_retry(
    setup, sink, settings, worker_key, revive_url
):
    """The lock lasts 2 s without a heartbeat; execute takes 3.5 s. The SDK's heartbeats keep it: a second worker
    meanwhile gets ACTION_IN_PROGRESS with retry_after, the reaper finds nothing to reap, and the commit lands."""
    import threading
    import time

    from cases.models import Action
    from revive_sdk import ActionInProgress

    settings.REVIVE_ACTION_LOCK_TIMEOUT = 2
    client, *_ = setup
    started, answers = threading.Event(), []

    def slow(ctx):
        started.set()
        time.sleep(3.5)
        return sink.send("ceo@example.com", ctx.idempotency_key)

    def other_worker():
        started.wait(10)
        time.sleep(2.5)  # past the lock's first expiry: only the heartbeats keep it
        assert services.reap_stale_actions() == []
        with Revive(revive_url, worker_key) as second:
            try:
                protect(second, sink)
            except ActionInProgress as busy:
                answers.append(busy.retry_after)

    thread = threading.Thread(target=other_worker)
    thread.start()
    result = protect(client, sink, execute=slow)
    thread.join(20)
    assert result == sink.accepted[0] and len(sink.accepted) == 1
    assert len(answers) == 1 and 0 < answers[0] <= 2
    assert Action.objects.get(action_key="send_exec_05").state == "committed"
