"""Child processes that cannot outlive the process that started them (Linux).

Each child gets ``PR_SET_PDEATHSIG`` = SIGKILL (set through ``prctl`` in the child, between fork and exec), so
it is killed by the kernel the moment its parent dies -- also when the parent is killed with SIGKILL and runs no
clean-up at all. Each child also leads a process group of its own, so that stopping it stops its own children
(a Celery pool, a server's workers) with one ``killpg``.

The kernel sends the signal when the *thread* that forked the child ends, not the process: start children from
a thread that lives as long as they should (the main thread, or the thread that runs the whole session).

``Pidfile`` records what a run started (pid + the kernel's start time of that pid), so the next run can reap the
leftovers of a crashed one and be sure it kills only its own processes, never a pid the system has reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
_libc = None


def _prctl_pdeathsig(sig: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def die_with_parent(parent_pid: int, *, user: tuple[int, int] | None = None):
    """A ``preexec_fn``: own process group, optionally another user, then SIGKILL on the parent's death.

    The credential change comes first because it clears the parent-death signal. If the parent died between fork
    and prctl, the child is already orphaned: it exits instead of running on.
    """

    def preexec() -> None:
        os.setpgid(0, 0)
        if user is not None:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
        _prctl_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def spawn(args: list[str], *, user: tuple[int, int] | None = None, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` for a child that dies with this process and leads its own process group."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(args, preexec_fn=die_with_parent(os.getpid(), user=user), **popen)


def stop(process: subprocess.Popen, *, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop a child and its process group: ``sig``, then SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while members of its group are not (a pool whose parent died first).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Pidfile:
    """A JSON file listing this run's children, rewritten as they start and stop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[int, dict] = {}

    def add(self, process: subprocess.Popen, name: str) -> None:
        self.entries[process.pid] = {"pid": process.pid, "start": start_time(process.pid), "name": name}
        self._write()

    def discard(self, process: subprocess.Popen) -> None:
        self.entries.pop(process.pid, None)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"owner": os.getpid(), "owner_start": start_time(os.getpid()), "children": list(self.entries.values())}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)

    def close(self) -> None:
        self.entries.clear()
        self.path.unlink(missing_ok=True)

    @staticmethod
    def reap(path: Path, *, grace: float = 5.0) -> list[int]:
        """Kill what a previous, crashed run recorded in ``path`` -- each child only if its pid still has the start
        time recorded for it (the same process, not a reused pid) -- and remove the file. A file whose owner is still
        alive belongs to a run in progress: it is left alone. Returns the pids killed."""
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        owner, owner_start = record.get("owner"), record.get("owner_start")
        if owner and owner_start is not None and start_time(owner) == owner_start:
            return []
        killed = []
        for child in record.get("children", []):
            pid, started = child.get("pid"), child.get("start")
            if pid and started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        deadline = time.monotonic() + grace
        while (
            killed and any(start_time(p) is not None and not _zombie(p) for p in killed) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        path.unlink(missing_ok=True)
        return killed


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
