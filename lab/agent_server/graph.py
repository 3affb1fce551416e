"""The lab's briefing as the LangGraph Agent Server serves it (``recovery_lab --runtime langgraph-server``).

The very graph Revive's own worker runs in-process (``lab.briefing``: five checkpoints, each through
``revive_sdk.langgraph.protect_action``), compiled by the server with its own checkpointer. Two things differ, both
because the server is a process of its own without Django: the credential comes from the lab process over loopback
(``REVIVE_LAB_CREDENTIAL_URL``, see ``lab.briefing.desk_credential``), and a step whose call timed out is retried by
the server after a pause (a node retry policy, as Temporal retries an activity), so the ``timeout`` scenario's
unanswered send is settled by the same run: ambiguous → reconcile → park on the dead grant. Revive never imports
this module.
"""

import httpx
from langgraph.types import RetryPolicy

from lab import briefing

RETRY = RetryPolicy(
    initial_interval=2.0, backoff_factor=1.0, jitter=False, max_attempts=5, retry_on=httpx.TimeoutException
)

graph = briefing.briefing(retry_policy=RETRY).compile()
