/** The TypeScript client's other methods and its error shapes, against a live Revive server. */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { ProviderError, Revive, ReviveError, ReviveUnavailable, RunAbandoned, RunParked } from "../src/index.js";
import { LiveServer } from "./support/live-server.js";

const DEAD_GRANT = new ProviderError(400, { error: "invalid_grant", error_description: "AADSTS50173: The provided grant has expired due to it being revoked." });

describe("the client against a live Revive server", () => {
  let server: LiveServer;
  let revive: Revive;

  before(async () => {
    server = await LiveServer.start();
    revive = new Revive({ url: server.url + "/", apiKey: server.apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  async function fresh() {
    const nonce = randomUUID().slice(0, 8);
    const connectionId = `conn_ops.${nonce}`;
    const runId = `run.${nonce}`;
    await server.perform({ op: "connection_create", connection_id: connectionId });
    const run = await revive.registerRun({ runId, runtime: "temporal", workflowName: "Nightly", runtimeRef: { workflow_id: runId } });
    assert.deepEqual(run, { run_id: runId, runtime: "temporal", runtime_ref: { workflow_id: runId }, workflow_name: "Nightly", state: "active" });
    return { connectionId, runId };
  }

  test("registerRun and recordCheckpoint are idempotent", async () => {
    const { runId } = await fresh();
    const again = await revive.registerRun({ runId, runtime: "temporal", workflowName: "Nightly", runtimeRef: { workflow_id: runId } });
    assert.equal(again.run_id, runId);
    const cp = { runId, checkpointId: "05", label: "05 / prepare brief" };
    assert.deepEqual(await revive.recordCheckpoint(cp), await revive.recordCheckpoint(cp));
    assert.equal((await revive.recoveryStatus(runId)).latest_checkpoint, "05");
  });

  test("reportCredentialFailure throws the signal, or returns the answer", async () => {
    const { connectionId, runId } = await fresh();
    const answer = await revive.reportCredentialFailure({ runId, connectionId, generation: 1, error: DEAD_GRANT, raiseSignal: false });
    assert.equal(answer.outcome, "parked");
    assert.match(answer.case_id ?? "", /^CASERV-\d+$/);
    await assert.rejects(revive.reportCredentialFailure({ runId, connectionId, generation: 1, error: DEAD_GRANT, checkpointId: "05" }),
      (error: unknown) => error instanceof RunParked && error.caseId === answer.case_id && error.connectionId === connectionId);
    const lease = await revive.lease(connectionId);
    assert.deepEqual([lease.generation, lease.usable, lease.case_id], [1, false, answer.case_id]);
  });

  test("a run whose case was abandoned is refused with RunAbandoned and nothing executes", async () => {
    const { connectionId, runId } = await fresh();
    let effects = 0;
    const send = () => revive.protectAction({
      runId, checkpointId: "05", connectionId, actionKey: "send-briefing",
      credential: () => { throw DEAD_GRANT; },
      execute: async () => { effects += 1; return { id: "m-1" }; },
    });
    let caseId = "";
    await assert.rejects(send(), (error: unknown) => error instanceof RunParked && Boolean((caseId = error.caseId)));
    const abandoned = await server.perform({ op: "abandoned", case_id: caseId });
    assert.deepEqual(abandoned.runs, ["claimed"]);
    await assert.rejects(send(), (error: unknown) =>
      error instanceof RunAbandoned && error.caseId === caseId && error.runId === runId);
    assert.equal(effects, 0);
  });

  test("concurrent attempts at one action execute it once", async () => {
    const { connectionId, runId } = await fresh();
    let effects = 0;
    const attempt = () => revive.protectAction({
      runId, checkpointId: "05", connectionId, actionKey: "send-briefing",
      execute: async ({ idempotencyKey }) => {
        effects += 1;
        await new Promise((resolve) => setTimeout(resolve, 200));
        return { id: idempotencyKey };
      },
    });
    const outcomes = await Promise.allSettled(Array.from({ length: 5 }, attempt));
    assert.equal(effects, 1);
    for (const o of outcomes) {
      if (o.status === "rejected") {
        assert.ok(o.reason instanceof ReviveError, String(o.reason));
        assert.equal(o.reason.code, "ACTION_IN_PROGRESS");
        assert.equal(o.reason.status, 409);
      }
    }
    assert.equal(outcomes.filter((o) => o.status === "fulfilled").length >= 1, true);
    assert.deepEqual(await attempt(), (outcomes.find((o) => o.status === "fulfilled") as PromiseFulfilledResult<unknown>).value);
    assert.equal(effects, 1);
  });

  test("errors keep Revive's stable code, status and data", async () => {
    await assert.rejects(new Revive({ url: server.url, apiKey: "rvk_wrong_key" }).lease("conn"),
      (error: unknown) => error instanceof ReviveError && error.code === "AUTHENTICATION_REQUIRED" && error.status === 401);
    await assert.rejects(revive.recordCheckpoint({ runId: "run", checkpointId: "not an id!" }),
      (error: unknown) => error instanceof ReviveError && error.code === "VALIDATION_ERROR" && error.status === 422 &&
        Array.isArray(error.data.errors));
    await assert.rejects(revive.lease("conn_nobody"),
      (error: unknown) => error instanceof ReviveError && error.code === "CONNECTION_NOT_FOUND" && error.status === 404);
  });

  test("an unreachable Revive is ReviveUnavailable", async () => {
    const { port } = await new Promise<{ port: number }>((resolve) => {
      // a port that was just free and is closed again: nothing listens there
      import("node:net").then(({ createServer }) => {
        const probe = createServer().listen(0, "127.0.0.1", () => {
          const { port } = probe.address() as { port: number };
          probe.close(() => resolve({ port }));
        });
      });
    });
    await assert.rejects(new Revive({ url: `http://127.0.0.1:${port}`, apiKey: "k" }).lease("conn"),
      (error: unknown) => error instanceof ReviveUnavailable && error.code === "REVIVE_UNAVAILABLE");
  });

  test("Revive needs a url and an api key", () => {
    assert.throws(() => new Revive({ url: "", apiKey: "k" }), TypeError);
  });
});
