/**
 * The conformance suite (`sdk/conformance/*.json`) run by the TypeScript SDK against one live Revive server.
 * The Python SDK runs the same files (`sdk/python/tests/test_conformance.py`); the format is in
 * `sdk/conformance/README.md`. JSON names are the wire's (snake_case); the SDK's errors carry them in camelCase.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { ProviderError, Revive, type ActionContext } from "../src/index.js";
import { LiveServer, REPO_ROOT } from "./support/live-server.js";

const CONFORMANCE = path.join(REPO_ROOT, "sdk", "conformance");
const SCENARIOS = readdirSync(CONFORMANCE).filter((f) => /^\d\d_.*\.json$/.test(f)).sort();
const PROVIDER_ERRORS = JSON.parse(readFileSync(path.join(CONFORMANCE, "provider_errors.json"), "utf8")) as Record<
  string, { status: number; body: unknown; headers: Record<string, string> }>;
const CASE_ID = /^CASERV-\d+$/;
const ERROR_FIELDS: Record<string, string> = {
  generation: "generation", current_generation: "currentGeneration", retry_after: "retryAfter", code: "code",
  status: "status", case_id: "caseId",
};

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any -- scenario data

class CallbackCrashed extends Error {
  override name = "CallbackCrashed";
}

interface Message { id: string; subject: string; idempotencyKey: string }

class MailSink {
  readonly messages: Message[] = [];
  send(subject: string, idempotencyKey: string) {
    const message = { id: `msg-${this.messages.length + 1}`, subject };
    this.messages.push({ ...message, idempotencyKey });
    return message;
  }
  find(idempotencyKey: string) {
    const m = this.messages.find((x) => x.idempotencyKey === idempotencyKey);
    return m ? { id: m.id, subject: m.subject } : null;
  }
}

function providerError(name: string): ProviderError {
  const e = PROVIDER_ERRORS[name];
  assert.ok(e, `unknown provider error ${name}`);
  return new ProviderError(e.status, e.body, e.headers);
}

class ScenarioRun {
  readonly nonce = randomUUID().slice(0, 8);
  readonly sink = new MailSink();
  readonly keysSeen = new Map<string, Set<string>>();
  lastParked: string | null = null;
  readonly runId = this.name("run");

  constructor(readonly scenario: Json, readonly client: Revive, readonly server: LiveServer) {}

  name(local: string): string {
    return `${local}.${this.nonce}`;
  }

  resolve(value: unknown): unknown {
    return value === "last_parked" ? this.lastParked : value;
  }

  async start() {
    for (const connection of this.scenario.connections as string[]) {
      await this.server.perform({ op: "connection_create", connection_id: this.name(connection) });
    }
    await this.client.registerRun({ runId: this.runId, runtime: "langgraph", workflowName: "Conformance", runtimeRef: { thread_id: this.runId } });
  }

  async step(index: number, step: Json) {
    const where = `step ${index}`;
    if ("protect" in step) return this.protect(step.protect, step.expect, where);
    if ("reconnect" in step) return void (await this.server.perform({ op: "reconnect", case_id: this.resolve(step.reconnect) }));
    if ("lease" in step) {
      const lease = (await this.client.lease(this.name(step.lease))) as Json;
      for (const [field, want] of Object.entries(step.expect)) assert.deepEqual(lease[field], this.resolve(want), `${where}: lease ${field}`);
      return;
    }
    if ("status" in step) return this.checkStatus(step.status, where);
    assert.fail(`${where}: unknown step ${JSON.stringify(step)}`);
  }

  async protect(spec: Json, expect: Json, where: string) {
    const calls: Record<string, number> = { credential: 0, execute: 0, reconcile: 0 };
    const seen: Record<string, unknown> = {};
    const action: string = spec.action;
    const credentialSpec = spec.credential ?? { returns: "token" };
    const noteKey = (ctx: ActionContext) => {
      if (!this.keysSeen.has(action)) this.keysSeen.set(action, new Set());
      this.keysSeen.get(action)!.add(ctx.idempotencyKey);
    };
    let result: unknown;
    let raised: unknown = undefined;
    try {
      result = await this.client.protectAction({
        runId: this.runId,
        checkpointId: spec.checkpoint ?? "05",
        connectionId: this.name(spec.connection ?? this.scenario.connections[0]),
        actionKey: action,
        params: spec.params ?? null,
        generation: spec.generation ?? undefined,
        credential: async () => {
          calls.credential! += 1;
          if ("provider_error" in credentialSpec) throw providerError(credentialSpec.provider_error);
          return credentialSpec.returns as string;
        },
        execute: async (ctx) => {
          calls.execute! += 1;
          seen.credential = ctx.credential;
          seen.generation = ctx.generation;
          noteKey(ctx);
          const b = spec.execute;
          if ("provider_error" in b) throw providerError(b.provider_error);
          if ("crash" in b) throw new CallbackCrashed(b.crash);
          if ("send_then_crash" in b) {
            this.sink.send(b.send_then_crash.subject, ctx.idempotencyKey);
            throw new CallbackCrashed("the provider's answer was lost");
          }
          return this.sink.send(b.send.subject, ctx.idempotencyKey);
        },
        reconcile: "reconcile" in spec
          ? async (ctx) => {
            calls.reconcile! += 1;
            noteKey(ctx);
            return this.sink.find(ctx.idempotencyKey);
          }
          : undefined,
      });
    } catch (error) {
      raised = error;
    }
    if (raised !== undefined) this.checkRaised(raised, expect, where);
    else {
      assert.equal(expect.raises, undefined, `${where}: expected ${expect.raises}, got result ${JSON.stringify(result)}`);
      assert.deepEqual(result, expect.returns, `${where}: result`);
    }
    for (const [callback, count] of Object.entries(expect.calls ?? {})) {
      assert.equal(calls[callback], count, `${where}: ${callback} called ${calls[callback]} times, expected ${count}`);
    }
    for (const [field, want] of Object.entries(expect.seen ?? {})) assert.deepEqual(seen[field], want, `${where}: execute saw ${field}`);
  }

  checkRaised(error: unknown, expect: Json, where: string) {
    const want: string | undefined = expect.raises;
    if (want === undefined) throw error;
    if (want === "callback") {
      assert.ok(error instanceof CallbackCrashed, `${where}: expected the callback's own error, got ${String(error)}`);
      return;
    }
    assert.ok(error instanceof Error, `${where}: threw a non-Error`);
    assert.equal(error.name, want, `${where}: expected ${want}, got ${error.name}: ${error.message}`);
    const e = error as unknown as Record<string, unknown>;
    if (want === "RunParked") {
      assert.match(String(e.caseId), CASE_ID, `${where}: case id`);
      if (expect.case_id) assert.equal(e.caseId, this.resolve(expect.case_id), `${where}: joined another case`);
      this.lastParked = e.caseId as string;
    }
    for (const field of ["generation", "current_generation", "retry_after", "code", "status"]) {
      if (field in expect) assert.deepEqual(e[ERROR_FIELDS[field]!], expect[field], `${where}: ${want}.${ERROR_FIELDS[field]}`);
    }
  }

  async checkStatus(want: Json, where: string) {
    const status = await this.client.recoveryStatus(this.runId);
    if ("run_state" in want) assert.equal(status.state, want.run_state, `${where}: run state`);
    if ("actions" in want) {
      assert.deepEqual(Object.fromEntries(status.actions.map((a) => [a.action_key, a.state])), want.actions, `${where}: action states`);
    }
    if ("cases" in want) assert.deepEqual(status.cases.map((c) => c.state), want.cases, `${where}: case states`);
    if ("blocking" in want) assert.equal(status.cases.some((c) => c.blocking), want.blocking, `${where}: blocking`);
  }

  async finish() {
    const status = await this.client.recoveryStatus(this.runId);
    const ledger = new Map(status.actions.map((a) => [a.action_key, a.idempotency_key]));
    for (const [action, keys] of this.keysSeen) {
      assert.deepEqual([...keys], [ledger.get(action)], `callbacks of ${action} saw the ledger's idempotency key`);
    }
    const perKey = new Map<string, number>();
    for (const m of this.sink.messages) perKey.set(m.idempotencyKey, (perKey.get(m.idempotencyKey) ?? 0) + 1);
    assert.ok([...perKey.values()].every((n) => n === 1), `duplicate effects: ${JSON.stringify([...perKey])}`);
    assert.equal(this.sink.messages.length, this.scenario.effects, "effects");
  }
}

describe("conformance against a live Revive server", () => {
  let server: LiveServer;
  let client: Revive;

  before(async () => {
    server = await LiveServer.start();
    client = new Revive({ url: server.url, apiKey: server.apiKey });
  });
  after(async () => {
    await server?.stop();
  });

  test("every scenario file is found", () => {
    assert.ok(SCENARIOS.length >= 9, `found ${SCENARIOS.length}`);
  });

  for (const file of SCENARIOS) {
    test(file.replace(/\.json$/, ""), async () => {
      const scenario = JSON.parse(readFileSync(path.join(CONFORMANCE, file), "utf8"));
      const run = new ScenarioRun(scenario, client, server);
      await run.start();
      for (const [index, step] of (scenario.steps as Json[]).entries()) await run.step(index, step);
      await run.finish();
    });
  }

  test("the committed OpenAPI schema is the one the live server serves", async () => {
    const served = await (await fetch(`${server.url}/api/v1/openapi.json`)).json();
    const committed = JSON.parse(readFileSync(path.join(REPO_ROOT, "sdk", "openapi", "worker-api.json"), "utf8"));
    assert.deepEqual(committed, served,
      "sdk/openapi/worker-api.json differs from the server's schema: run `.venv/bin/python manage.py export_openapi`, then `npm run build`");
  });
});
