/**
 * The LangGraph.js helper with a real LangGraph.js graph (in-process, MemorySaver) against a live Revive server:
 * a rejected credential interrupts the node, the same thread resumes with Command({ resume }) after the owner's
 * reconnect, and every effect happens once.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { Annotation, Command, END, MemorySaver, START, StateGraph } from "@langchain/langgraph";

import { ProviderError, Revive } from "../src/index.js";
import * as reviveLg from "../src/langgraph.js";
import { LiveServer } from "./support/live-server.js";

const DEAD_GRANT = new ProviderError(400, {
  error: "invalid_grant", error_description: "AADSTS700082: The refresh token has expired due to inactivity.", error_codes: [700082],
}, { "Content-Type": "application/json" });

/** The identity layer's custody: rejects the grant until the owner reconnects. */
class Vault {
  revoked = true;
  leases = 0;
  lease(): string {
    this.leases += 1;
    if (this.revoked) throw DEAD_GRANT;
    return `token-${this.leases}`;
  }
}

/** The mail API: counts every message it accepts. */
class Mail {
  readonly sent: Array<{ id: string; idempotencyKey: string; credential: unknown }> = [];
  send(credential: unknown, idempotencyKey: string) {
    const message = { id: `msg-${this.sent.length + 1}`, idempotencyKey, credential };
    this.sent.push(message);
    return { id: message.id };
  }
  find(idempotencyKey: string) {
    const m = this.sent.find((x) => x.idempotencyKey === idempotencyKey);
    return m ? { id: m.id } : null;
  }
}

const State = Annotation.Root({
  runId: Annotation<string>,
  prepared: Annotation<unknown>,
  sent: Annotation<unknown>,
});

function briefing(revive: Revive, connectionId: string, vault: Vault, mail: Mail, counts: { prepare: number }) {
  return new StateGraph(State)
    .addNode("prepare", async (state) => ({
      prepared: await reviveLg.protectAction(revive, {
        runId: state.runId, checkpointId: "04", connectionId, actionKey: "prepare_brief",
        execute: () => {
          counts.prepare += 1;
          return { pages: 3 };
        },
      }),
    }))
    .addNode("send", async (state) => ({
      sent: await reviveLg.protectAction(revive, {
        runId: state.runId, checkpointId: "05", connectionId, actionKey: "send-briefing",
        credential: () => vault.lease(),
        execute: ({ credential, idempotencyKey }) => mail.send(credential, idempotencyKey),
        reconcile: ({ idempotencyKey }) => mail.find(idempotencyKey),
      }),
    }))
    .addEdge(START, "prepare")
    .addEdge("prepare", "send")
    .addEdge("send", END);
}

describe("LangGraph.js: RunParked becomes interrupt(), the same thread resumes with Command({ resume })", () => {
  let server: LiveServer;
  let revive: Revive;

  before(async () => {
    server = await LiveServer.start();
    revive = new Revive({ url: server.url, apiKey: server.apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  async function world() {
    const nonce = randomUUID().slice(0, 8);
    const connectionId = `conn_microsoft_ops.${nonce}`;
    const runId = `run_7f2.${nonce}`;
    const threadId = `thread-${nonce}`;
    await server.perform({ op: "connection_create", connection_id: connectionId });
    await reviveLg.registerRun(revive, { runId, threadId, graph: "briefing", workflowName: "Nightly executive briefing" });
    return { connectionId, runId, threadId, vault: new Vault(), mail: new Mail(), counts: { prepare: 0 }, saver: new MemorySaver() };
  }

  test("parks at 05 on a rejected grant, resumes the same thread after the reconnect, sends once", async () => {
    const w = await world();
    const graph = briefing(revive, w.connectionId, w.vault, w.mail, w.counts).compile({ checkpointer: w.saver });
    await graph.invoke({ runId: w.runId }, reviveLg.runConfig(w.threadId));

    const [parked, ...more] = await reviveLg.parkedInterrupts(graph, w.threadId);
    assert.equal(more.length, 0);
    assert.ok(parked);
    assert.equal(parked.run_id, w.runId);
    assert.match(parked.cases[0]!, /^CASERV-\d+$/);
    assert.deepEqual(parked.connections, { [w.connectionId]: 1 });
    assert.equal(w.mail.sent.length, 0);
    assert.equal((await revive.recoveryStatus(w.runId)).state, "parked");

    assert.deepEqual(await reviveLg.resumeIfReleased(revive, graph, { runId: w.runId, threadId: w.threadId }),
      { resumed: false, reason: "blocked", blocking: parked.cases });

    // A resume that does not name this run's case is not ours: the node interrupts again and nothing is sent.
    await graph.invoke(new Command({ resume: { revive: "resume", run_id: w.runId, cases: ["CASERV-0"] } }), reviveLg.runConfig(w.threadId));
    assert.equal((await reviveLg.parkedInterrupts(graph, w.threadId)).length, 1);
    assert.equal(w.mail.sent.length, 0);

    const reconnected = await server.perform({ op: "owner_reconnected", case_id: parked.cases[0] });
    // Released: the case is `resuming` until the run is past the action it was parked on, then `resumed` (below).
    assert.deepEqual([reconnected.generation, reconnected.state], [2, "resuming"], "Revive's own resume path released the run");
    w.vault.revoked = false;
    const attempt = await reviveLg.resumeIfReleased(revive, graph, { runId: w.runId, threadId: w.threadId });
    assert.equal(attempt.resumed, true);
    assert.deepEqual((attempt as { output: { sent: unknown } }).output.sent, { id: "msg-1" });

    assert.equal(w.mail.sent.length, 1, "the brief is sent exactly once");
    assert.equal(w.counts.prepare, 1, "the step before the park is not run again");
    const status = await revive.recoveryStatus(w.runId);
    assert.equal(status.state, "active");
    assert.deepEqual(status.cases.map((c) => [c.case_id, c.state]), [[parked.cases[0], "resumed"]]);
    assert.deepEqual(Object.fromEntries(status.actions.map((a) => [a.action_key, [a.state, a.generation]])),
      { prepare_brief: ["committed", 1], "send-briefing": ["committed", 2] });
    assert.equal(w.mail.sent[0]!.idempotencyKey, status.actions.find((a) => a.action_key === "send-briefing")!.idempotency_key);

    assert.deepEqual(await reviveLg.resumeIfReleased(revive, graph, { runId: w.runId, threadId: w.threadId }),
      { resumed: false, reason: "not_parked", blocking: [] }, "resuming again changes nothing");
    assert.equal(w.mail.sent.length, 1);
  });

  test("another worker (a new graph over the same checkpoints) resumes the parked thread", async () => {
    const w = await world();
    const first = briefing(revive, w.connectionId, w.vault, w.mail, w.counts).compile({ checkpointer: w.saver });
    await first.invoke({ runId: w.runId }, reviveLg.runConfig(w.threadId));
    const [parked] = await reviveLg.parkedInterrupts(first, w.threadId);
    assert.ok(parked);

    const second = briefing(revive, w.connectionId, w.vault, w.mail, w.counts).compile({ checkpointer: w.saver });
    const waiting = reviveLg.resumeWhenReleased(revive, second, { runId: w.runId, threadId: w.threadId, pollMs: 100 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(w.mail.sent.length, 0, "nothing runs while the case blocks the run");
    w.vault.revoked = false;
    await server.perform({ op: "owner_reconnected", case_id: parked.cases[0] });
    const attempt = await waiting;
    assert.equal(attempt.resumed, true);
    assert.equal(w.mail.sent.length, 1);
    assert.equal(w.counts.prepare, 1);
    assert.equal((await revive.recoveryStatus(w.runId)).cases[0]!.state, "resumed");
  });
});
