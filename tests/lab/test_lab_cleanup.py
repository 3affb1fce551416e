"""``recovery_lab`` killed with SIGKILL leaves no process behind, and the next run reaps what an older one left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.test import override_settings

from lab.processes import Pidfile, spawn, start_time, stop
from lab.session import children_dir, reap_leftovers

from .test_recovery_lab_command import ROOT, embedded_env, manage


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc, so children in other process groups count too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_sigkill_of_the_lab_mid_run_leaves_no_process(tmp_path):
    env = {**embedded_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    assert manage(env, "migrate", "-v0").returncode == 0
    out_path = tmp_path / "lab.out"
    with open(out_path, "wb") as out:
        lab = subprocess.Popen(
            [sys.executable, "manage.py", "recovery_lab", "--scenario", "worker-lost"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        children: set[int] = set()
        # Mid-run: the identity provider serves and the scenario has started (its worker process may be up).
        while time.monotonic() < deadline:
            assert lab.poll() is None, out_path.read_text(errors="replace")[-3000:]
            children = descendants(lab.pid)
            if "▶" in out_path.read_text(errors="replace") and children:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the lab never got going:\n" + out_path.read_text(errors="replace")[-3000:])
        assert children, "the lab had started no process"
        recorded = [json.loads(p.read_text()) for p in (tmp_path / "lab" / "children").glob("*.json")]
        assert any(c["name"] == "lab identity provider" for r in recorded for c in r["children"])

        os.kill(lab.pid, signal.SIGKILL)
        lab.wait(30)
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in children if alive(pid)
        }
        assert not left, f"left behind after SIGKILL of the lab: {left}"
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(30)


def test_the_next_run_reaps_only_the_processes_a_killed_run_recorded(tmp_path):
    """A leftover whose pid and start time match the record is killed; a live process whose start time does not
    match (a reused pid) and a record whose owner still runs are left alone."""
    leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    owner_alive = spawn(["sleep", "600"])
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    try:
        with override_settings(VAR_DIR=str(tmp_path)):
            folder = children_dir()
            folder.mkdir(parents=True)
            (folder / "crashed.json").write_text(
                json.dumps(
                    {
                        "owner": dead_owner.pid,
                        "owner_start": 1,
                        "children": [
                            {"pid": leftover.pid, "start": start_time(leftover.pid), "name": "idp"},
                            {"pid": stranger.pid, "start": start_time(stranger.pid) + 1, "name": "reused pid"},
                        ],
                    }
                )
            )
            running = Pidfile(folder / "running.json")
            running.add(owner_alive, "a child of a run in progress")  # owner: this process, alive
            reaped_lines: list[str] = []
            killed = reap_leftovers(reaped_lines.append)

            assert killed == [leftover.pid]
            assert leftover.wait(10) == -signal.SIGKILL
            assert stranger.poll() is None and owner_alive.poll() is None
            assert not (folder / "crashed.json").exists() and (folder / "running.json").exists()
            assert reaped_lines and str(leftover.pid) in reaped_lines[0]
    finally:
        for process in (leftover, stranger, owner_alive):
            stop(process, grace=2)


def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed(tmp_path):
    script = (
        "import sys, time; from lab.processes import spawn; "
        "p = spawn(['sleep', '600']); print(p.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child) and os.getpgid(child) == child  # its own process group
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
