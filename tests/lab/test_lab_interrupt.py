"""Ctrl-C in a terminal: the lab ends with one line, no traceback, and leaves no process behind.

The lab runs under a pseudo-terminal (``pty.fork``: the pty is its controlling terminal), on the
embedded default, with ``--runtime temporal`` so that it has a server, the identity provider and a
worker process of its own when the test types Ctrl-C.
"""

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.lab.test_recovery_lab_command import ROOT, embedded_env, manage

DEADLINE = 300.0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children started in sessions of their own included)."""
    table = {}
    for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        table.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in table.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def read_until(fd: int, wanted: bytes, buffer: bytearray, deadline: float) -> bool:
    while wanted not in buffer:
        if time.monotonic() > deadline:
            return False
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return wanted in buffer
            if not chunk:
                return wanted in buffer
            buffer.extend(chunk)
    return True


def test_ctrl_c_ends_the_lab_with_one_line_and_no_process_left(tmp_path):
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "-v0").returncode == 0
    pid, fd = pty.fork()
    if pid == 0:  # the child: the lab, on the pty
        # As a shell starts a command: SIGINT at its default and no signal blocked, whatever this test process (its
        # earlier tests, their libraries' threads) left in the dispositions and the mask a child inherits.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "manage.py", "recovery_lab", "--runtime", "temporal"], env)
    output = bytearray()
    try:
        assert read_until(fd, b"injected fault", output, time.monotonic() + DEADLINE), output.decode(errors="replace")
        below = descendants(pid)
        assert below, "the lab had started no process of its own"
        os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the lab's foreground process group
        read_until(fd, b"\x00never", output, time.monotonic() + 120)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    text = output.decode(errors="replace")
    tail = text[text.index("injected fault") :]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, (status, tail[-3000:])
    assert "Traceback" not in tail and "KeyboardInterrupt" not in tail, tail[-3000:]
    assert "Interrupted after" in tail and "stopped its servers and worker processes" in tail
    deadline = time.monotonic() + 30
    while any(alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in below if alive(p)], "processes left behind"
