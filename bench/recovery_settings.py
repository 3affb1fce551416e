"""Settings of every process of the recovery benchmark: Revive's, plus the benchmark's graph."""

from revive_site.settings import *  # noqa: F403

REVIVE_LANGGRAPH_GRAPHS = {"bench-briefing": "bench.recovery_graph:briefing"}
