"""The embedded default's e-mail backend."""

from __future__ import annotations

import sys

from django.core.mail.backends.console import EmailBackend as ConsoleEmailBackend


class StderrConsoleEmailBackend(ConsoleEmailBackend):
    """Django's console backend, writing to stderr: the reconnect e-mail shows in the terminal, and commands that
    print machine-readable output on stdout (``--json``) stay parseable."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("stream", sys.stderr)
        super().__init__(*args, **kwargs)
