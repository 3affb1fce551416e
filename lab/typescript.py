"""The lab's workflow worker in TypeScript (``recovery_lab --sdk typescript``): the same four scenarios and incident
records, with the briefing run by ``sdk/typescript/lab/briefing-worker.mjs`` -- a LangGraph.js graph in a Node
process, every mutating step through the TypeScript SDK.

What differs from the Python worker is only what must: Revive cannot load a LangGraph.js graph, so the run is
registered ``resumed_by: worker`` and the Node process resumes its own thread once Revive releases it; its
checkpoints are in a file of the scenario's directory (another process takes over after a kill); and its credential
comes from the lab's credential custody through this process, which answers the worker's requests on its stdin
(a vault stand-in: the token never crosses Revive's worker API).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading

import httpx
from django.db import close_old_connections

from revive_sdk import ProviderError

from . import briefing
from .processes import spawn
from .scenarios import Scenario
from .waiting import WAIT, ScenarioFailed
from .world import ROOT

PACKAGE = ROOT / "sdk" / "typescript"
WORKER = PACKAGE / "lab" / "briefing-worker.mjs"
GRAPH_NAME = "lab-briefing-ts"


def worker_missing() -> str | None:
    """Why the TypeScript worker cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Node >= 20 is needed for --sdk typescript)"
    if (
        not (PACKAGE / "dist" / "langgraph.js").exists()
        or not (PACKAGE / "node_modules" / "@langchain" / "langgraph").exists()
    ):
        return "the TypeScript SDK is not built: run `cd sdk/typescript && npm ci && npm run build`"
    return None


class NodeWorker:
    """One Node process running the briefing; its reports are queued, its credential requests answered from custody."""

    def __init__(self, scenario: TypeScriptScenario, mode: str) -> None:
        self.scenario = scenario
        self.reports: queue.Queue[dict] = queue.Queue()
        log = open(scenario.world.var_dir / f"ts-worker-{scenario.run_id}.log", "ab")
        self.process = spawn(
            [
                "node",
                str(WORKER),
                "--run-id",
                scenario.run_id,
                "--thread-id",
                scenario.thread_id,
                "--mode",
                mode,
                "--state",
                json.dumps(scenario.state()),
                "--checkpoints",
                str(scenario.checkpoints),
            ],
            cwd=PACKAGE,
            env=scenario.world.worker_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )  # dies with the lab, in a process group of its own
        log.close()
        if scenario.world.children is not None:
            scenario.world.children.add(self.process, f"lab node worker {scenario.run_id}")
        threading.Thread(target=self._serve, name=f"ts-worker-{self.process.pid}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _serve(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "vault" in message:
                self._answer(message["vault"])
            else:
                self.reports.put(message)
        self.reports.put({"report": "exited", "code": self.process.wait()})

    def _answer(self, request: dict) -> None:
        close_old_connections()
        try:
            answer = {"id": request["id"], "token": briefing.credential(self.scenario.state())}
        except ProviderError as exc:
            answer = {"id": request["id"], "error": exc.as_payload()}
        except httpx.HTTPError as exc:
            answer = {"id": request["id"], "error": {"status": None, "body": {"error": type(exc).__name__}}}
        finally:
            close_old_connections()
        try:
            self.process.stdin.write(json.dumps(answer) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker is gone (killed by the scenario)

    def report(self, what: str) -> dict:
        try:
            message = self.reports.get(timeout=WAIT)
        except queue.Empty:
            raise ScenarioFailed(f"timed out after {WAIT:.0f}s waiting for the TypeScript worker to {what}") from None
        if message.get("report") == "exited":
            raise ScenarioFailed(f"the TypeScript worker exited ({message.get('code')}) before it could {what}")
        return message

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()


class TypeScriptScenario(Scenario):
    sdk = "typescript"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checkpoints = self.world.var_dir / f"checkpoints-{self.thread_id}.json"
        self.worker: NodeWorker | None = None
        self.final_log: list[dict] = []

    def run(self) -> dict:
        try:
            return super().run()
        finally:
            if self.worker is not None:
                self.worker.stop()  # a scenario that failed half-way leaves no worker polling behind

    def register(self) -> None:
        client = briefing.revive()
        client.register_run(
            run_id=self.run_id,
            runtime="langgraph",
            workflow_name=briefing.WORKFLOW,
            runtime_ref={"thread_id": self.thread_id, "graph": GRAPH_NAME, "resumed_by": "worker"},
        )
        for checkpoint, label, _ in briefing.STEPS:
            client.record_checkpoint(run_id=self.run_id, checkpoint_id=checkpoint, label=f"{checkpoint} / {label}")

    def _start(self, mode: str) -> NodeWorker:
        if self.worker is not None:
            self.worker.stop()
        self.worker = NodeWorker(self, mode)
        return self.worker

    def invoke(self, payload) -> dict:
        """Run the briefing in a Node worker until it parks, finishes or fails (a parked worker stays up)."""
        worker = self._start("run" if payload is not None else "continue")
        report = worker.report("run the briefing")
        if report["report"] == "error":
            raise WorkerStepFailed(report["error"])
        if report["report"] == "done":
            self.final_log = report["log"]
            return {}
        return {"__interrupt__": report["interrupts"]}

    def _timeout(self) -> None:
        self.say("  ⚡ injected fault: the mail service accepts the brief, then does not answer in time")
        self.world.standin.time_out_next(briefing.MAIL_TIMEOUT + 0.5)
        try:
            self.invoke(self.state())
            raise ScenarioFailed("the send did not time out")
        except WorkerStepFailed as exc:
            if "Timeout" not in str(exc):
                raise
        from cases.models import Action

        action = Action.objects.get(run_id=self.run_id, action_key=briefing.SEND_ACTION)
        self.notes["after_timeout"] = action.state
        self.say(f"  · worker: the send timed out; the ledger holds {briefing.SEND_ACTION} as '{action.state}'")
        self._park_on_revoked_grant(resume_thread=True)
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])

    def _worker_lost(self) -> None:
        self.say("  ⚡ injected fault: the refresh token is revoked at the provider")
        self.revoke_refresh_token()
        if not self.invoke(self.state()).get("__interrupt__"):
            raise ScenarioFailed("the TypeScript worker did not park the run")
        self.parked_case()
        killed = self.worker.pid
        self.notes["killed_pid"] = killed
        self.say(f"  ⚡ injected fault: worker process {killed} is killed (SIGKILL) while the run is parked")
        self.worker.kill()
        self.notes["sign_in"] = self.owner_reconnects(self.owner_user["username"])
        self._start("resume")  # another process takes the same run id over from the checkpoint file

    def wait_finished(self) -> None:
        try:
            report = self.worker.report("finish the resumed run")
            while report["report"] == "parked":
                report = self.worker.report("finish the resumed run")
            if report["report"] != "done":
                raise ScenarioFailed(f"the resumed TypeScript worker failed: {report.get('error')}")
            self.final_log = report["log"]
        finally:
            self.worker.stop()
        from cases.models import RecoveryCase

        from .waiting import wait_for

        wait_for(
            lambda: RecoveryCase.objects.get(reference=self.case_reference).state == "resumed",
            f"{self.case_reference} to be resumed",
        )

    def checkpoints_completed(self) -> list[str]:
        return [step["checkpoint"] for step in self.final_log]


class WorkerStepFailed(Exception):
    """A step of the briefing failed in the TypeScript worker (its graph invoke threw)."""
