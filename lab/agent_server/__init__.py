"""What the LangGraph Agent Server loads for ``recovery_lab --runtime langgraph-server`` (``langgraph.json``, ``graph``).

Imported by the server's own process (``.venv-lgserver``, no Django): nothing here imports Django or the lab's
other modules but ``lab.briefing``. The lab's side of this runtime is ``lab.langgraph_server``.
"""
