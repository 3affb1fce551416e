"""The runtime tests' briefing graph as a LangGraph Agent Server serves it (``langgraph.json`` beside this file).

The server (``langgraph dev`` from ``.venv-lgserver``, started by ``tests/runtimes/test_langgraph_server.py``) loads
this file by path; the repository root is on its ``PYTHONPATH``, so the graph is the very one the in-process tests
run (``tests.runtimes.support.graphs.briefing``: ``prepare``, then ``send`` with the credential the test revokes,
then ``finish``), each protected action through ``revive_sdk.langgraph.protect_action`` against the test's live
Revive. The server compiles in its own checkpointer; Revive never imports this module.
"""

from tests.runtimes.support.graphs import briefing

graph = briefing().compile()
