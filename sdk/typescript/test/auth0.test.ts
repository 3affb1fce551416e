/**
 * The Auth0 Token Vault helper against the lab's stand-in (`lab/token_vault_standin.py`, run by the live server),
 * and what Revive makes of a refused exchange. The Python SDK's `sdk/python/tests/test_token_vault.py`, in TypeScript.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { inspect } from "node:util";
import { after, before, describe, test } from "node:test";

import { FederatedToken, REQUESTED_TOKEN_TYPE, TokenVault, exchangeForm } from "../src/auth0.js";
import { ProviderError, Revive, RunParked } from "../src/index.js";
import { LiveServer } from "./support/live-server.js";

const USER = "auth0|ada";
const CONNECTION = "google-oauth2";
const ADA_SUB = "10769150350006150715113082367"; // the stand-in's upstream account "ada"

interface Vault { url: string; client_id: string; client_secret: string; upstream_issuer: string }

test("the exchange sends Auth0's parameters", () => {
  assert.deepEqual(exchangeForm({ clientId: "cid", clientSecret: "secret", connection: "google-oauth2", subjectToken: "rt", loginHint: "ada@contoso.example" }), {
    grant_type: "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token",
    client_id: "cid", client_secret: "secret", subject_token: "rt",
    subject_token_type: "urn:ietf:params:oauth:token-type:refresh_token",
    requested_token_type: "http://auth0.com/oauth/token-type/federated-connection-access-token",
    connection: "google-oauth2", login_hint: "ada@contoso.example",
  });
  const byAccessToken = exchangeForm({ clientId: "c", connection: "x", subjectToken: "at", subjectTokenType: "access_token" });
  assert.equal(byAccessToken.subject_token_type, "urn:ietf:params:oauth:token-type:access_token");
  assert.equal("client_secret" in byAccessToken, false);
  assert.throws(() => exchangeForm({ clientId: "c", connection: "x", subjectToken: "t", subjectTokenType: "id_token" as "access_token" }), TypeError);
  assert.throws(() => exchangeForm({ clientId: "c", connection: "", subjectToken: "t" }), TypeError);
  assert.equal(new TokenVault({ domain: "contoso.eu.auth0.com/", clientId: "c" }).tokenUrl, "https://contoso.eu.auth0.com/oauth/token");
});

test("an unreachable vault is a network error", async () => {
  const { createServer } = await import("node:net");
  const port = await new Promise<number>((resolve) => {
    const probe = createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
  const client = new TokenVault({ domain: `http://127.0.0.1:${port}`, clientId: "cid", clientSecret: "secret", timeoutMs: 2000 });
  await assert.rejects(client.exchange({ connection: CONNECTION, subjectToken: "rt" }),
    (error: unknown) => error instanceof ProviderError && error.errorKind === "connection_error" && error.status === null);
});

describe("Token Vault against the lab's stand-in and a live Revive server", () => {
  let server: LiveServer;
  let revive: Revive;
  let vault: Vault;

  before(async () => {
    server = await LiveServer.start();
    revive = new Revive({ url: server.url, apiKey: server.apiKey });
    vault = (await server.perform({ op: "token_vault_start" })) as unknown as Vault;
  });
  after(async () => {
    await server?.stop();
  });

  const helper = (clientSecret = vault.client_secret) => new TokenVault({ domain: vault.url, clientId: vault.client_id, clientSecret });
  const signIn = async (user = USER) =>
    String((await server.perform({ op: "token_vault_sign_in", user, connection: CONNECTION, upstream: "ada" })).subject_token);
  /** The upstream account an access token belongs to, asked of the upstream provider (its userinfo). */
  const upstreamSub = async (accessToken: string) => {
    const response = await fetch(`${vault.url}/upstream/userinfo`, { headers: { Authorization: `Bearer ${accessToken}` } });
    return response.ok ? ((await response.json()) as { sub: string }).sub : `HTTP ${response.status}`;
  };

  test("exchange returns the upstream token and never shows it", async () => {
    const session = await signIn();

    const token = await helper().exchange({ connection: CONNECTION, subjectToken: session });

    assert.ok(token instanceof FederatedToken);
    assert.equal(await upstreamSub(token.accessToken), ADA_SUB);
    assert.equal(token.issuedTokenType, REQUESTED_TOKEN_TYPE);
    assert.equal(token.connection, CONNECTION);
    assert.ok(token.expiresAt !== null && token.expiresAt > Date.now());
    assert.ok(!inspect(token).includes(token.accessToken) && !JSON.stringify(token).includes(token.accessToken));
    assert.ok(!inspect(helper()).includes(vault.client_secret), "the client secret is not shown either");
    const viaCallback = await helper().credential({ connection: CONNECTION, subjectToken: async () => session })();
    assert.equal(await upstreamSub(viaCallback), ADA_SUB);
  });

  for (const [fault, status, error] of [
    ["upstream_gone", 401, "federated_connection_refresh_token_not_found"],
    ["bad_subject", 403, "invalid_grant"],
    ["bad_client", 401, "invalid_client"],
  ] as const) {
    test(`a refused exchange (${fault}) throws ProviderError with Auth0's answer`, async () => {
      const user = `auth0|${fault}`;
      const session = await signIn(user);
      if (fault === "upstream_gone") await server.perform({ op: "token_vault_revoke_upstream", user, connection: CONNECTION });
      const client = helper(fault === "bad_client" ? "wrong" : vault.client_secret);

      await assert.rejects(client.exchange({ connection: CONNECTION, subjectToken: fault === "bad_subject" ? "nope" : session }),
        (refused: unknown) => refused instanceof ProviderError && refused.status === status &&
          (refused.body as { error: string }).error === error && refused.headers["content-type"] === "application/json");
    });
  }

  async function tokenVaultRun() {
    const nonce = randomUUID().slice(0, 8);
    const connectionId = `conn_vault.${nonce}`;
    const runId = `run_vault.${nonce}`;
    await server.perform({ op: "connection_create", connection_id: connectionId, provider: "auth0_token_vault",
      provider_tenant: CONNECTION, provider_issuer: vault.upstream_issuer });
    await revive.registerRun({ runId, runtime: "langgraph", workflowName: "Nightly executive briefing" });
    return { connectionId, runId };
  }

  test("protectAction executes with the exchanged upstream token", async () => {
    const { connectionId, runId } = await tokenVaultRun();
    const session = await signIn("auth0|protected");

    const result = await revive.protectAction({
      runId, checkpointId: "05", connectionId, actionKey: "send_exec_05",
      credential: helper().credential({ connection: CONNECTION, subjectToken: () => session }),
      execute: async ({ credential }) => ({ sub: await upstreamSub(credential as string) }),
    });

    assert.deepEqual(result, { sub: ADA_SUB });
  });

  test("a gone upstream grant parks the run as relink_required", async () => {
    const { connectionId, runId } = await tokenVaultRun();
    const user = "auth0|parked";
    const session = await signIn(user);
    await server.perform({ op: "token_vault_revoke_upstream", user, connection: CONNECTION });
    let executed = 0;

    let caseId = "";
    await assert.rejects(revive.protectAction({
      runId, checkpointId: "05", connectionId, actionKey: "send_exec_05",
      credential: helper().credential({ connection: CONNECTION, subjectToken: () => session }),
      execute: () => { executed += 1; return null; },
    }), (error: unknown) => error instanceof RunParked && Boolean((caseId = error.caseId)));

    const status = await revive.recoveryStatus(runId);
    const parkedOn = status.cases.find((c) => c.case_id === caseId);
    assert.deepEqual([parkedOn?.failure_class, parkedOn?.provider_code, parkedOn?.provider, parkedOn?.blocking],
      ["relink_required", "federated_connection_refresh_token_not_found", "auth0_token_vault", true]);
    assert.equal((await revive.lease(connectionId)).usable, false);
    assert.equal(executed, 0);
  });
});
