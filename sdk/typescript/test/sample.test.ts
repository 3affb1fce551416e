/**
 * The product page's sample, verbatim, against the built package (`dist/`, what `npm install` of the repository
 * path gives) and a live Revive server.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, test } from "node:test";

import { ProviderError, Revive, RunParked } from "revive-sdk"; // the package itself: its exports, i.e. dist/
import { LiveServer } from "./support/live-server.js";

let server: LiveServer;
before(async () => {
  server = await LiveServer.start();
});
after(async () => {
  await server?.stop();
});

test("the product page's protectAction sample sends once, replays, and parks on a revoked grant", async () => {
  const nonce = randomUUID().slice(0, 8);
  const workflow = { runId: `run_7f2.${nonce}`, checkpointId: "05" };
  const message = { to: "ceo@example.com", subject: "Nightly executive briefing" };
  const mailbox: Array<{ message: typeof message; credential: string; idempotencyKey: string }> = [];
  let revoked = false;
  const vault = {
    lease: async (connectionId: string) => {
      if (revoked) throw new ProviderError(400, { error: "invalid_grant", error_description: "AADSTS700082" });
      return `token-for-${connectionId}`;
    },
  };
  const graph = {
    sendMail: async (m: typeof message, { credential, idempotencyKey }: { credential?: string; idempotencyKey: string }) => {
      mailbox.push({ message: m, credential: credential!, idempotencyKey });
      return { id: `msg-${mailbox.length}` };
    },
    findMailByIdempotencyKey: async (key: string) => {
      const i = mailbox.findIndex((m) => m.idempotencyKey === key);
      return i < 0 ? null : { id: `msg-${i + 1}` };
    },
  };
  await server.perform({ op: "connection_create", connection_id: "conn_microsoft_ops" });
  const revive = new Revive({ url: server.url, apiKey: server.apiKey });
  await revive.registerRun({ runId: workflow.runId, runtime: "langgraph", workflowName: "Nightly executive briefing" });

  const send = async () => {
    // ---- the product page's sample, unchanged ----
    const result = await revive.protectAction({
      runId: workflow.runId,
      checkpointId: workflow.checkpointId,
      connectionId: "conn_microsoft_ops",
      actionKey: "send-briefing",
      credential: () => vault.lease("conn_microsoft_ops"),
      execute: ({ credential, idempotencyKey }) => graph.sendMail(message, { credential, idempotencyKey }),
      reconcile: ({ idempotencyKey }) => graph.findMailByIdempotencyKey(idempotencyKey),
    });
    // ----
    return result;
  };
  assert.deepEqual(await send(), { id: "msg-1" });
  assert.deepEqual(await send(), { id: "msg-1" }, "replayed, not sent again");
  assert.equal(mailbox.length, 1);
  assert.equal(mailbox[0]!.credential, "token-for-conn_microsoft_ops");

  revoked = true;
  const other = { ...workflow, runId: `run_8a1.${nonce}` };
  await revive.registerRun({ runId: other.runId, runtime: "langgraph", workflowName: "Nightly executive briefing" });
  workflow.runId = other.runId;
  await assert.rejects(send(), (error: unknown) => error instanceof RunParked && /^CASERV-\d+$/.test(error.caseId));
  assert.equal(mailbox.length, 1);
});
