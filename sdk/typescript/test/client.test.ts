/** The TypeScript client's other methods and its error shapes, against a live Revive server. */

import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { ProviderError, Revive, ReviveError, ReviveUnavailable, RunAbandoned, RunParked } from "../src/index.js";
import { LiveServer } from "./support/live-server.js";

const randomHex = (bytes: number) => randomBytes(bytes).toString("hex");
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

  /** A Revive client whose requests reach the live server unchanged, with the `traceparent` of each recorded. */
  function recorded() {
    const sent: Array<{ path: string; traceparent: string | null; tracestate: string | null }> = [];
    const client = new Revive({
      url: server.url, apiKey: server.apiKey,
      fetch: (input, init) => {
        const headers = new Headers(init?.headers);
        sent.push({ path: new URL(String(input)).pathname, traceparent: headers.get("traceparent"), tracestate: headers.get("tracestate") });
        return fetch(input, init);
      },
    });
    return { client, sent };
  }

  const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/;

  test("every call sends a W3C traceparent: one trace id per protectAction, a fresh parent id per request", async () => {
    const { connectionId, runId } = await fresh();
    const { client, sent } = recorded();
    const send = (actionKey: string) => client.protectAction({
      runId, checkpointId: "05", connectionId, actionKey, execute: ({ idempotencyKey }) => ({ id: idempotencyKey }),
    });
    await send("send-a");
    const first = sent.splice(0);
    await send("send-b");
    const second = sent.splice(0);
    await client.recoveryStatus(runId);
    await client.recoveryStatus(runId);

    assert.deepEqual(first.map((r) => r.path.split("/").pop()), ["lease", "begin", "commit"]);
    const parsed = (rows: typeof first) => rows.map((r) => {
      const match = TRACEPARENT.exec(r.traceparent ?? "");
      assert.ok(match, `${r.path}: ${r.traceparent}`);
      return { trace: match[1]!, parent: match[2]! };
    });
    const a = parsed(first);
    const b = parsed(second);
    assert.equal(new Set(a.map((x) => x.trace)).size, 1, "lease, begin and commit share the operation's trace id");
    assert.equal(new Set(a.map((x) => x.parent)).size, a.length, "each request has its own parent id");
    assert.equal(new Set(b.map((x) => x.trace)).size, 1);
    assert.notEqual(a[0]!.trace, b[0]!.trace, "the next operation is another trace");
    const [s1, s2] = parsed(sent);
    assert.notEqual(s1!.trace, s2!.trace, "two single calls are two operations");
  });

  test("inside an active OpenTelemetry span the span's context is sent, through the registered propagator if any", async () => {
    const api = await import("@opentelemetry/api");
    const { AsyncLocalStorageContextManager } = await import("@opentelemetry/context-async-hooks");
    const { W3CTraceContextPropagator } = await import("@opentelemetry/core");
    const manager = new AsyncLocalStorageContextManager().enable();
    assert.ok(api.context.setGlobalContextManager(manager));
    try {
      const { connectionId, runId } = await fresh();
      const { client, sent } = recorded();
      const spanContext = { traceId: randomHex(16), spanId: randomHex(8), traceFlags: api.TraceFlags.SAMPLED };
      const inSpan = <T>(work: () => Promise<T>) =>
        api.context.with(api.trace.setSpanContext(api.context.active(), spanContext), work);
      const send = (actionKey: string) => client.protectAction({
        runId, checkpointId: "05", connectionId, actionKey, execute: () => ({ sent: true }),
      });

      await inSpan(() => send("send-otel"));  // no propagator registered: built from the span context
      assert.equal(sent.length, 3);
      for (const r of sent.splice(0)) assert.equal(r.traceparent, `00-${spanContext.traceId}-${spanContext.spanId}-01`, r.path);

      assert.ok(api.propagation.setGlobalPropagator(new W3CTraceContextPropagator()));
      const withState = { ...spanContext, traceState: api.createTraceState("vendor=v1") };
      await api.context.with(api.trace.setSpanContext(api.context.active(), withState), () => send("send-otel-2"));
      assert.equal(sent.length, 3);
      for (const r of sent.splice(0)) {
        assert.equal(r.traceparent, `00-${spanContext.traceId}-${spanContext.spanId}-01`, r.path);
        assert.equal(r.tracestate, "vendor=v1", r.path);
      }

      await send("send-after-the-span");  // outside the span: the SDK's own trace again
      const own = sent.splice(0).map((r) => TRACEPARENT.exec(r.traceparent ?? "")?.[1]);
      assert.equal(new Set(own).size, 1);
      assert.notEqual(own[0], spanContext.traceId);
    } finally {
      api.propagation.disable();
      api.context.disable();
    }
  });

  test("Revive needs a url and an api key", () => {
    assert.throws(() => new Revive({ url: "", apiKey: "k" }), TypeError);
  });
});
