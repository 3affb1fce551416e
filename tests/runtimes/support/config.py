"""The Revive settings the runtime tests add, for the test process and the Celery worker alike."""

GRAPHS = {
    "test-briefing": "tests.runtimes.support.graphs:briefing",
    "test-two-connections": "tests.runtimes.support.graphs:two_connections",
}
# Sends are looked up at the provider by idempotency key; "notify_*" actions have no server-side reconciler,
# so the resumed worker's reconcile callback settles them.
RECONCILERS = {"send_exec_*": "tests.runtimes.support.world:reconcile_by_idempotency_key"}
