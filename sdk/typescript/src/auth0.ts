/**
 * Auth0 Token Vault: the upstream access token of a connected account, exchanged at each use (the Python SDK's
 * `revive_sdk.auth0`, same request, same errors).
 *
 * Token Vault keeps the upstream grant (Google, Microsoft, ...) in Auth0. A worker trades the user's Auth0 token
 * for the upstream access token with the federated-connection token exchange:
 *
 *     POST https://{domain}/oauth/token   (application/x-www-form-urlencoded)
 *     grant_type=urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token
 *     client_id, client_secret
 *     subject_token=<the user's Auth0 refresh token (or access token)>
 *     subject_token_type=urn:ietf:params:oauth:token-type:refresh_token   (or ...:access_token)
 *     requested_token_type=http://auth0.com/oauth/token-type/federated-connection-access-token
 *     connection=<the Auth0 connection, e.g. google-oauth2>   [login_hint=<upstream account>] [scope]
 *
 * Nothing is stored: not by this helper, not by Revive. When the exchange is refused the helper throws
 * `ProviderError` with Auth0's answer; Revive classifies it for a connection of provider `auth0_token_vault`
 * (`federated_connection_refresh_token_not_found` and any other 4xx: the owner re-links the connected account,
 * `relink_required`; Auth0's `invalid_grant` for the subject token: the owner signs in to Auth0 again). Token Vault
 * requires refresh-token rotation off for the subject refresh token, so no single-flight refresh is needed here.
 *
 *     import { TokenVault } from "revive-sdk/auth0";
 *     const vault = new TokenVault({ domain: "contoso.eu.auth0.com", clientId, clientSecret });
 *     await revive.protectAction({ ..., credential: vault.credential({ connection: "google-oauth2", subjectToken: () => session.refreshToken }) });
 */

import { ProviderError } from "./errors.js";

export const GRANT_TYPE = "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
export const SUBJECT_TOKEN_TYPES = {
  refresh_token: "urn:ietf:params:oauth:token-type:refresh_token",
  access_token: "urn:ietf:params:oauth:token-type:access_token",
} as const;
export type SubjectTokenType = keyof typeof SUBJECT_TOKEN_TYPES;
export const REQUESTED_TOKEN_TYPE = "http://auth0.com/oauth/token-type/federated-connection-access-token";

/** The provider answer's headers that Revive's classifier reads (the others are not sent on). */
const KEPT_HEADERS = new Set(["content-type", "retry-after", "x-ratelimit-reset", "www-authenticate"]);

/** An upstream access token from Token Vault; printing or serializing it never shows the token. */
export class FederatedToken {
  readonly #accessToken: string;
  constructor(
    accessToken: string,
    readonly connection: string,
    /** When the token expires, milliseconds since the epoch (`null` if Auth0 did not say). */
    readonly expiresAt: number | null = null,
    readonly scope: string = "",
    readonly issuedTokenType: string = REQUESTED_TOKEN_TYPE,
  ) {
    this.#accessToken = accessToken;
  }

  get accessToken(): string {
    return this.#accessToken;
  }

  toJSON(): Record<string, unknown> {
    return { connection: this.connection, expiresAt: this.expiresAt, scope: this.scope, issuedTokenType: this.issuedTokenType };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `FederatedToken ${JSON.stringify(this.toJSON())}`;
  }
}

export interface ExchangeOptions {
  connection: string;
  subjectToken: string;
  subjectTokenType?: SubjectTokenType;
  loginHint?: string | null;
  scope?: string | null;
}

/** The token endpoint's form for one exchange. */
export function exchangeForm({ clientId, clientSecret = "", connection, subjectToken, subjectTokenType = "refresh_token", loginHint, scope }:
  ExchangeOptions & { clientId: string; clientSecret?: string }): Record<string, string> {
  if (!Object.hasOwn(SUBJECT_TOKEN_TYPES, subjectTokenType)) {
    throw new TypeError(`subjectTokenType must be one of ${Object.keys(SUBJECT_TOKEN_TYPES).sort().join(", ")}`);
  }
  if (!connection || !subjectToken) throw new TypeError("connection and subjectToken are required");
  const form: Record<string, string> = {
    grant_type: GRANT_TYPE, client_id: clientId, subject_token: subjectToken,
    subject_token_type: SUBJECT_TOKEN_TYPES[subjectTokenType], requested_token_type: REQUESTED_TOKEN_TYPE, connection,
  };
  if (clientSecret) form.client_secret = clientSecret;
  if (loginHint) form.login_hint = loginHint;
  if (scope) form.scope = scope;
  return form;
}

/** The token of a successful exchange, or `ProviderError` carrying Auth0's answer (status, body, the headers Revive reads). */
export async function exchangeResult(response: Response, connection: string): Promise<FederatedToken> {
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the answer
  }
  const answer = body !== null && typeof body === "object" && !Array.isArray(body) ? (body as Record<string, unknown>) : null;
  if (response.status !== 200 || answer === null || !answer.access_token) {
    const headers: Record<string, string> = {};
    response.headers.forEach((value, name) => {
      if (KEPT_HEADERS.has(name.toLowerCase())) headers[name.toLowerCase()] = value;
    });
    throw new ProviderError(response.status, body, headers);
  }
  const expiresIn = answer.expires_in;
  return new FederatedToken(
    String(answer.access_token), connection,
    typeof expiresIn === "number" ? Date.now() + expiresIn * 1000 : null,
    typeof answer.scope === "string" ? answer.scope : "",
    typeof answer.issued_token_type === "string" ? answer.issued_token_type : REQUESTED_TOKEN_TYPE,
  );
}

export interface TokenVaultOptions {
  /** The Auth0 domain (`contoso.eu.auth0.com`) or a full URL (e.g. a local stand-in): the exchange goes to `{domain}/oauth/token`. */
  domain: string;
  clientId: string;
  clientSecret?: string;
  /** Per exchange, milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Another `fetch`; the platform's by default. */
  fetch?: typeof fetch;
}

type MaybePromise<T> = T | Promise<T>;

export class TokenVault {
  readonly tokenUrl: string;
  readonly clientId: string;
  readonly #clientSecret: string;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor({ domain, clientId, clientSecret = "", timeoutMs = 10_000, fetch: fetchImpl }: TokenVaultOptions) {
    if (!domain || !clientId) throw new TypeError("TokenVault needs { domain, clientId }");
    const base = domain.includes("://") ? domain : `https://${domain}`;
    this.tokenUrl = base.replace(/\/+$/, "") + "/oauth/token";
    this.clientId = clientId;
    this.#clientSecret = clientSecret;
    this.#timeoutMs = timeoutMs;
    this.#fetch = fetchImpl ?? globalThis.fetch;
  }

  /** One exchange: the upstream access token, or `ProviderError` (Auth0's answer, or `errorKind` for the network). */
  async exchange(options: ExchangeOptions): Promise<FederatedToken> {
    const form = exchangeForm({ ...options, clientId: this.clientId, clientSecret: this.#clientSecret });
    let response: Response;
    try {
      response = await this.#fetch(this.tokenUrl, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
        body: new URLSearchParams(form).toString(),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      const name = error instanceof Error ? error.name : "";
      throw new ProviderError(null, null, {}, name === "TimeoutError" || name === "AbortError" ? "timeout" : "connection_error");
    }
    return exchangeResult(response, options.connection);
  }

  /** A `credential` callback for `protectAction`: the upstream access token, exchanged at each call. */
  credential({ subjectToken, ...rest }: Omit<ExchangeOptions, "subjectToken"> & { subjectToken: () => MaybePromise<string> }): () => Promise<string> {
    return async () => (await this.exchange({ ...rest, subjectToken: await subjectToken() })).accessToken;
  }
}
