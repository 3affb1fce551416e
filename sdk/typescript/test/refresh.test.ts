/**
 * Single-flight refresh: many workers on one expired access token cause one refresh at the provider
 * (the Python SDK's `sdk/python/tests/test_single_flight_refresh.py`, in TypeScript).
 *
 * The provider stand-in (`lab/provider_standin.py`, run by the live server) rotates refresh tokens as Auth0 does and
 * revokes the whole family when a retired refresh token is presented again, so a second, uncoordinated refresh is
 * not just wasteful: it kills the grant. Revive's refresh claim carries decisions only; the refreshed grant goes
 * where the credential lives (here a vault object shared by the workers).
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { ProviderError, Revive, RunParked } from "../src/index.js";
import { LiveServer } from "./support/live-server.js";

const WORKERS = 20;

/** Where the grant lives: an access token with its expiry, and the (rotating) refresh token. */
class Vault {
  accessToken = "expired-access-token";
  expiresAt = Date.now() - 60_000;
  constructor(public refreshToken: string, readonly tokenUrl: string) {}

  load = (): string | null => (this.expiresAt > Date.now() + 30_000 ? this.accessToken : null);

  refreshAt = async (): Promise<string> => {
    const response = await fetch(this.tokenUrl, {
      method: "POST",
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: this.refreshToken, client_id: "lab" }),
      signal: AbortSignal.timeout(30_000),
    });
    const body = (await response.json()) as { access_token: string; refresh_token: string; expires_in: number };
    if (response.status !== 200) throw new ProviderError(response.status, body, response.headers);
    this.accessToken = body.access_token;
    this.refreshToken = body.refresh_token;
    this.expiresAt = Date.now() + body.expires_in * 1000;
    return body.access_token;
  };
}

describe("single-flight refresh against a live Revive server and a rotating provider", () => {
  let server: LiveServer;

  before(async () => {
    server = await LiveServer.start();
  });
  after(async () => {
    await server?.stop();
  });

  /** A new rotating provider (the refresh slow enough for every worker to arrive while it runs), a connection, runs. */
  async function rotating(runs = WORKERS) {
    const { url } = await server.perform({ op: "provider_start", provider: "auth0", rotating: true, token_delay: 0.5 });
    const { refresh_token } = await server.perform({ op: "provider_issue_refresh_token" });
    const nonce = randomUUID().slice(0, 8);
    const connectionId = `conn_sf.${nonce}`;
    await server.perform({ op: "connection_create", connection_id: connectionId, provider: "auth0",
      provider_tenant: "", provider_issuer: "https://contoso.auth0.example/" });
    const client = new Revive({ url: server.url, apiKey: server.apiKey });
    const runIds = await Promise.all(Array.from({ length: runs }, async (_, i) => {
      const runId = `run_sf.${nonce}.${i}`;
      await client.registerRun({ runId, runtime: "langgraph", workflowName: "Nightly executive briefing" });
      return runId;
    }));
    return { connectionId, runIds, vault: new Vault(String(refresh_token), `${url}/oauth2/v2.0/token`) };
  }

  const counts = async () =>
    (await server.perform({ op: "provider_counts" })) as { refreshes: number; reuse_detected: number; token_requests: number };

  /** One worker: its own client (as separate processes would have) and its own credential helper. */
  function worker(connectionId: string, runId: string, vault: Vault) {
    const revive = new Revive({ url: server.url, apiKey: server.apiKey });
    const credential = revive.singleFlightCredential(connectionId, {
      load: vault.load, refresh: vault.refreshAt, isFresh: (token) => token !== null,
    });
    return revive.protectAction({
      runId, checkpointId: "05", connectionId, actionKey: "send_exec_05", credential,
      execute: ({ credential: token }) => ({ token }),
    });
  }

  test("twenty workers on one expired token cause exactly one refresh", async () => {
    const { connectionId, runIds, vault } = await rotating();

    const results = await Promise.allSettled(runIds.map((runId) => worker(connectionId, runId, vault)));

    assert.deepEqual(results.filter((r) => r.status === "rejected"), []);
    assert.deepEqual(await counts(), { refreshes: 1, reuse_detected: 0, token_requests: 1 });
    const tokens = new Set(results.map((r) => (r as PromiseFulfilledResult<{ token: string }>).value.token));
    assert.deepEqual([...tokens], [vault.accessToken]);
    // Revive granted one round for this generation, and it was refreshed: a worker that saw nothing reloads round 1.
    const probe = await new Revive({ url: server.url, apiKey: server.apiKey })
      .refreshClaim(connectionId, { generation: 1, holder: "probe", seenRound: 0 });
    assert.deepEqual([probe.decision, probe.round], ["reload", 1]);
  });

  test("without the claim the same workers trip reuse detection", async () => {
    const { vault } = await rotating(0);

    const results = await Promise.allSettled(Array.from({ length: WORKERS }, () => vault.refreshAt()));

    assert.ok((await counts()).reuse_detected >= 1);
    assert.ok(results.some((r) => r.status === "rejected" && r.reason instanceof ProviderError));
  });

  test("a rejected credential is refreshed again in a new round", async () => {
    const { connectionId, vault } = await rotating(0);
    const revive = new Revive({ url: server.url, apiKey: server.apiKey });
    const credential = revive.singleFlightCredential(connectionId, {
      load: vault.load, refresh: vault.refreshAt, isFresh: (token) => token !== null,
    });

    const first = await credential();
    assert.deepEqual([credential.round, await credential()], [1, first]); // fresh: loaded, not refreshed
    credential.rejected(); // e.g. the API answered 401 and protectAction threw RefreshRequired
    const second = await credential();

    assert.notEqual(second, first);
    assert.equal(credential.round, 2);
    const { refreshes, reuse_detected } = await counts();
    assert.deepEqual([refreshes, reuse_detected], [2, 0]);
  });

  test("a dead grant found by the holder parks every run", async () => {
    const { connectionId, runIds, vault } = await rotating(5);
    await server.perform({ op: "provider_revoke_all" }); // the provider refuses every refresh: Auth0's invalid_grant

    const results = await Promise.allSettled(runIds.map((runId) => worker(connectionId, runId, vault)));

    const parked = results.map((r) => (r.status === "rejected" && r.reason instanceof RunParked ? r.reason.caseId : String(r.status)));
    assert.ok(parked.every((caseId) => /^CASERV-\d+$/.test(caseId)), parked.join(", "));
    assert.equal(new Set(parked).size, 1, "one case, every run on it");
  });
});
