"""The names Revive's server and the runtime helpers agree on, in one place.

Dependency-free (no runtime SDK is imported), so Revive's server imports them as they are and the helpers
(``revive_sdk.temporal``, ``.restate``, ``.langgraph``) re-export them. The TypeScript SDK keeps the same values
in ``sdk/typescript/src/temporal-names.ts``.
"""

# The runtimes a run registers with (``Revive.register_run(runtime=...)``): LangGraph graphs Revive resumes in its
# own worker, graphs on a LangGraph Agent Server (resumed over its HTTP API), Temporal workflows, Restate workflows.
RUNTIME_LANGGRAPH = "langgraph"
RUNTIME_LANGGRAPH_SERVER = "langgraph-server"
RUNTIME_TEMPORAL = "temporal"
RUNTIME_RESTATE = "restate"

# Temporal: the signal that resumes a parked workflow, the one that tells it its case was abandoned, and the query
# that says where it is parked.
TEMPORAL_SIGNAL = "revive_reauthorized"
TEMPORAL_ABANDON_SIGNAL = "revive_abandoned"
TEMPORAL_QUERY = "revive_parked"

# Restate: the handler Revive calls to resolve the promise a parked workflow waits on.
RESTATE_RESUME_HANDLER = "revive_reauthorized"

# ``value["revive"]`` of what Revive delivers (a resume, or the news that the case was abandoned) and of
# LangGraph's interrupt value for a parked run.
RESUME_KIND = "resume"
ABANDON_KIND = "abandoned"
PARKED_KIND = "parked"
