/**
 * The client of Revive's worker API (`/api/v1`), with `protectAction` as the product page shows it.
 *
 * Requests and answers are typed from the server's committed OpenAPI schema (`sdk/openapi/worker-api.json`,
 * generated into `src/generated/` by `npm run generate`). The rules of `protectAction` are the Python SDK's
 * (`revive_sdk/flows.py`); the conformance suite (`sdk/conformance/`) holds both SDKs to them.
 */

import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

import {
  ActionAmbiguous,
  ActionFailed,
  LeaseFenced,
  RunAbandoned,
  ProviderError,
  RefreshRequired,
  RetryLater,
  ReviveError,
  ReviveUnavailable,
  RunParked,
} from "./errors.js";
import type { components, paths } from "./generated/worker-api.js";
import { singleFlightCredential, type SingleFlightCredential, type SingleFlightOptions } from "./refresh.js";

type Schemas = components["schemas"];
export type Lease = Schemas["LeaseOut"];
export type RunRecord = Schemas["RunOut"];
export type CheckpointRecord = Schemas["CheckpointOut"];
export type RecoveryStatus = Schemas["RecoveryStatusOut"];
export type FailureAnswer = Schemas["FailureOut"];
export type BeginAnswer = Schemas["BeginOut"];
export type ActionRecord = Schemas["ActionOut"];
export type Runtime = Schemas["RunIn"]["runtime"];
export type RefreshClaimAnswer = Schemas["RefreshClaimOut"];

type Json<R> = R extends { content: { "application/json": infer B } } ? B : never;
type Method = "get" | "post";
type Operation<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type RequestBody<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { requestBody: infer B } ? Json<NonNullable<B>> : undefined;
type Answer<P extends keyof paths, M extends Method> =
  Operation<P, M> extends { responses: { 200: infer R } } ? Json<R> : never;

/** What `execute` and `reconcile` receive. */
export interface ActionContext<C = unknown> {
  /** Stable for (run, action key): pass it to the provider so it can deduplicate and be searched by it. */
  idempotencyKey: string;
  generation: number;
  attempt: number;
  credential: C | undefined;
}

/** What a `reconcile` callback may return to say precisely what it found. */
export class Reconciliation<R = unknown> {
  constructor(
    readonly found: boolean,
    readonly evidence: Record<string, unknown> = {},
    readonly result: R | null = null,
    readonly externalRef: string = "",
  ) {}
}

/** What an `execute` callback may return to record an external reference beside its result. */
export class Committed<R = unknown> {
  constructor(
    readonly result: R,
    readonly externalRef: string = "",
  ) {}
}

type MaybePromise<T> = T | Promise<T>;

export interface ProtectActionOptions<R, C> {
  runId: string;
  checkpointId: string;
  connectionId: string;
  actionKey: string;
  /** Called only when the action may execute; throw `ProviderError` with the provider's answer if it refuses. */
  credential?: () => MaybePromise<C>;
  /** The mutating call. Throw `ProviderError` when the provider refused and nothing happened. */
  execute: (ctx: ActionContext<C>) => MaybePromise<R | Committed<R>>;
  /** Called when an earlier attempt's outcome is unknown: return what it found, `null` if absent, or a `Reconciliation`. */
  reconcile?: (ctx: ActionContext<C>) => MaybePromise<R | Reconciliation<R> | null | undefined | false>;
  /** What the action does; a later attempt with other params is refused (`ACTION_PARAMS_MISMATCH`). */
  params?: Record<string, unknown> | null;
  /** The generation this worker holds; by default the connection's current one is leased. */
  generation?: number;
}

export interface ReviveOptions {
  /** Revive's base URL, e.g. `https://revive.internal` (the worker API is under `/api/v1`). */
  url: string;
  apiKey: string;
  /** Per request, milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Another `fetch` (a test double, a proxying one); the platform's by default. */
  fetch?: typeof fetch;
}

const USER_AGENT = "revive-sdk-typescript/0.1";

/*
 * W3C Trace Context (`traceparent`) on every call to Revive, as the Python SDK sends it (`revive_sdk/tracecontext.py`):
 * Revive stores the trace id with each audit event it writes and logs it with each line.
 * - Inside an active OpenTelemetry span (the worker traces with `@opentelemetry/api`, an optional peer dependency
 *   loaded only if installed), the span's context is sent: through the registered propagator (`tracestate` too),
 *   or built from the span context when no propagator is registered.
 * - Otherwise one trace id per SDK operation (a `protectAction` is one trace over its lease, begin, commit or fail
 *   calls), a fresh parent id per request.
 */
const operationTrace = new AsyncLocalStorage<string>();
type OpenTelemetryApi = typeof import("@opentelemetry/api");
let openTelemetry: Promise<OpenTelemetryApi | null> | undefined;

function randomHex(bytes: number): string {
  for (;;) {
    const hex = randomBytes(bytes).toString("hex");
    if (/[^0]/.test(hex)) return hex; // all zeros is invalid in W3C Trace Context
  }
}

async function traceHeaders(): Promise<Record<string, string>> {
  const api = await (openTelemetry ??= import("@opentelemetry/api").catch(() => null));
  const active = api?.context.active();
  const span = api && active ? api.trace.getSpanContext(active) : undefined;
  if (api && active && span && api.isSpanContextValid(span)) {
    const carrier: Record<string, string> = {};
    api.propagation.inject(active, carrier);
    if (carrier.traceparent) return carrier;
    const sampled = (span.traceFlags & api.TraceFlags.SAMPLED) === api.TraceFlags.SAMPLED;
    return { traceparent: `00-${span.traceId}-${span.spanId}-${sampled ? "01" : "00"}` };
  }
  return { traceparent: `00-${operationTrace.getStore() ?? randomHex(16)}-${randomHex(8)}-01` };
}

/** Run `work` as one SDK operation (one trace id); an operation inside another joins the outer one's trace. */
function asOperation<T>(work: () => Promise<T>): Promise<T> {
  return operationTrace.getStore() ? work() : operationTrace.run(randomHex(16), work);
}

function jsonable(value: unknown): unknown {
  if (value === undefined) return null;
  try {
    JSON.stringify(value);
    return value;
  } catch {
    return { repr: String(value).slice(0, 2000) };
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** Turn Revive's answer to a provider failure into the signal the worker acts on. */
export function raiseForFailure(answer: FailureAnswer, connectionId: string, generation: number): never {
  switch (answer.outcome) {
    case "parked":
      throw new RunParked(answer.case_id ?? "", connectionId, generation);
    case "retry":
      throw new RetryLater(Number(answer.retry_after ?? 0), answer.code);
    case "refresh":
      throw new RefreshRequired(answer.code);
    case "reacquire":
      throw new LeaseFenced(generation, answer.current_generation ?? null);
    default:
      throw new ActionFailed(answer.failure_class || "unknown", answer.code, answer.message);
  }
}

export class Revive {
  readonly #base: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;

  constructor({ url, apiKey, timeoutMs = 10_000, fetch: fetchImpl }: ReviveOptions) {
    if (!url || !apiKey) throw new TypeError("Revive needs { url, apiKey }");
    this.#base = url.replace(/\/+$/, "");
    this.#headers = { "X-Api-Key": apiKey, "User-Agent": USER_AGENT, Accept: "application/json" };
    this.#timeoutMs = timeoutMs;
    this.#fetch = fetchImpl ?? globalThis.fetch;
  }

  async #request<P extends keyof paths, M extends Method>(
    method: M,
    path: P,
    params: Record<string, string>,
    body: RequestBody<P, M>,
  ): Promise<Answer<P, M>> {
    const url = this.#base + String(path).replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(params[name] ?? ""));
    const headers: Record<string, string> = { ...this.#headers, ...(await traceHeaders()) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await this.#fetch(url, {
        method: method.toUpperCase(),
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      throw new ReviveUnavailable("REVIVE_UNAVAILABLE", `cannot reach Revive: ${error instanceof Error ? error.name : "error"}`);
    }
    let answer: unknown = null;
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
    if (response.ok) return answer as Answer<P, M>;
    if (answer && typeof answer === "object" && "code" in answer) {
      const { code, message, data } = answer as { code: string; message?: string; data?: Record<string, unknown> };
      if (code === "LEASE_FENCED") {
        throw new LeaseFenced(Number(data?.generation ?? 0), (data?.current_generation as number | undefined) ?? null);
      }
      if (code === "RUN_ABANDONED") {
        throw new RunAbandoned((data?.case_id as string | undefined) ?? null, (data?.run_id as string | undefined) ?? null);
      }
      throw new ReviveError(code, message ?? "", response.status, data ?? {});
    }
    throw new ReviveError("HTTP_ERROR", `HTTP ${response.status}`, response.status);
  }

  /** The connection's current generation (`usable` is false while a reconnect is pending). */
  lease(connectionId: string): Promise<Lease> {
    return this.#request("post", "/api/v1/connections/{connection_id}/lease", { connection_id: connectionId }, undefined);
  }

  /**
   * Claim the refresh of a generation's credential (single flight); `seenRound` is the refresh round of the
   * credential that failed. The answer is a decision (`refresh` | `wait` | `reload` | `fenced`), never a token.
   * `singleFlightCredential` drives this and `refreshRelease`; call them yourself only to build another helper.
   */
  refreshClaim(connectionId: string, { generation, holder, seenRound = 0 }: { generation: number; holder: string; seenRound?: number }): Promise<RefreshClaimAnswer> {
    return this.#request("post", "/api/v1/connections/{connection_id}/refresh-claims", { connection_id: connectionId }, {
      generation, holder, seen_round: seenRound,
    });
  }

  /** The holder of a refresh claim says how its refresh went: waiters then reload (`refreshed`) or claim in turn (`failed`). */
  refreshRelease(connectionId: string, { generation, holder, round, outcome }: {
    generation: number; holder: string; round: number; outcome: "refreshed" | "failed";
  }): Promise<RefreshClaimAnswer> {
    return this.#request("post", "/api/v1/connections/{connection_id}/refresh-claims/release", { connection_id: connectionId }, {
      generation, holder, round, outcome,
    });
  }

  /**
   * A `credential` callback for `protectAction` that refreshes once per (connection, generation) across every
   * worker: when `load()`'s credential is not `isFresh` (or was `rejected()`), one worker runs `refresh()` (which
   * refreshes at the provider and stores the new grant where the credential lives) while the others wait and
   * `load()` its result. See `SingleFlightCredential`.
   */
  singleFlightCredential<C>(connectionId: string, options: SingleFlightOptions<C>): SingleFlightCredential<C> {
    return singleFlightCredential(this, connectionId, options);
  }

  /** Register a run (idempotent): the runtime and its own reference (thread id, workflow id and run id, ...). */
  registerRun({ runId, runtime, workflowName, runtimeRef = {} }: {
    runId: string; runtime: Runtime; workflowName: string; runtimeRef?: Record<string, unknown>;
  }): Promise<RunRecord> {
    return this.#request("post", "/api/v1/runs", {}, {
      run_id: runId, runtime, workflow_name: workflowName, runtime_ref: runtimeRef,
    });
  }

  /** Record a checkpoint of a run (idempotent). */
  recordCheckpoint({ runId, checkpointId, label = "", runtimeRef = {} }: {
    runId: string; checkpointId: string; label?: string; runtimeRef?: Record<string, unknown>;
  }): Promise<CheckpointRecord> {
    return this.#request("post", "/api/v1/runs/{run_id}/checkpoints", { run_id: runId }, {
      checkpoint_id: checkpointId, label, runtime_ref: runtimeRef,
    });
  }

  /** The run's recovery cases (blocking or not) and its action ledger. */
  recoveryStatus(runId: string): Promise<RecoveryStatus> {
    return this.#request("get", "/api/v1/runs/{run_id}/recovery", { run_id: runId }, undefined);
  }

  /**
   * Report a credential failure seen outside a protected action. By default the signal it implies is thrown
   * (`RunParked`, `RetryLater`, `RefreshRequired`, `LeaseFenced`, `ActionFailed`); with `raiseSignal: false`
   * the answer is returned.
   */
  async reportCredentialFailure({ runId, connectionId, generation, error, checkpointId = null, actionKey = null, raiseSignal = true }: {
    runId: string; connectionId: string; generation: number; error: ProviderError;
    checkpointId?: string | null; actionKey?: string | null; raiseSignal?: boolean;
  }): Promise<FailureAnswer> {
    const answer = await this.#request("post", "/api/v1/runs/{run_id}/credential-failures", { run_id: runId }, {
      connection_id: connectionId, generation, checkpoint_id: checkpointId, action_key: actionKey, error: error.toPayload(),
    });
    if (raiseSignal) raiseForFailure(answer, connectionId, generation);
    return answer;
  }

  /**
   * Execute a mutating action at most once for (run, action key).
   *
   * Returns the action's result — replayed when it was already committed, or what `reconcile` found when an
   * earlier attempt's outcome was unknown. Throws `RunParked` (with the case id) when the run must wait for a
   * reconnect, `LeaseFenced` when `generation` is stale, `RetryLater` / `RefreshRequired` for transient and
   * expired-token failures, `ActionAmbiguous` when the outcome is unknown and there is no `reconcile`. Anything
   * else `execute` throws marks the action ambiguous (it may have happened) and is rethrown.
   */
  protectAction<R = unknown, C = unknown>(options: ProtectActionOptions<R, C>): Promise<R> {
    return asOperation(() => this.#protectAction(options));
  }

  async #protectAction<R, C>(options: ProtectActionOptions<R, C>): Promise<R> {
    const { runId, checkpointId, connectionId, actionKey, credential, execute, reconcile, params = null } = options;
    const generation = options.generation ?? (await this.lease(connectionId)).generation;
    const ids = { run_id: runId, action_key: actionKey };
    let key = "";
    // At most two rounds: a reconciliation that finds nothing lets the next begin execute.
    for (let round = 0; round < 2; round++) {
      const begun = await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/begin", ids, {
        checkpoint_id: checkpointId, connection_id: connectionId, generation, params,
      });
      key = begun.idempotency_key;
      if (begun.decision === "replay") return begun.result as R;
      if (begun.decision === "fenced") throw new LeaseFenced(generation, begun.current_generation);
      if (begun.decision === "parked") throw new RunParked(begun.case_id ?? "", connectionId, generation);
      const ctx: ActionContext<C> = { idempotencyKey: key, generation, attempt: begun.attempt, credential: undefined };
      if (begun.decision === "reconcile") {
        if (!reconcile) throw new ActionAmbiguous(actionKey, key);
        let found: Awaited<ReturnType<NonNullable<typeof reconcile>>>;
        try {
          found = await reconcile(ctx);
        } catch (error) {
          if (!(error instanceof ProviderError)) throw error;
          // Looking the effect up needs the credential too: a rejected one parks the run (the action stays
          // ambiguous until it is reconciled, by a server-side reconciler or after the resume).
          await this.reportCredentialFailure({ runId, connectionId, generation, error, checkpointId, actionKey });
          throw error; // not reached: the report throws the signal
        }
        const rec = found instanceof Reconciliation
          ? found
          : found === null || found === undefined || found === false
            ? new Reconciliation<R>(false, { source: "sdk reconcile callback", found: false })
            : new Reconciliation<R>(true, { source: "sdk reconcile callback", found: jsonable(found) }, found as R);
        await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/reconcile", ids, {
          generation, found: rec.found, evidence: rec.evidence, result: jsonable(rec.result), external_ref: rec.externalRef,
        });
        if (rec.found) return rec.result as R;
        continue;
      }
      // decision === "execute": the ledger now holds this action as executing under our generation.
      let cred: C | undefined;
      try {
        cred = credential ? await credential() : undefined;
      } catch (error) {
        if (error instanceof ProviderError) {
          const answer = await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/fail", ids, {
            generation, error: error.toPayload(),
          });
          raiseForFailure(answer, connectionId, generation);
        }
        // Nothing mutating ran: record the attempt as failed so it may run again later.
        await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/fail", ids, {
          generation, error: { status: null, body: { error: "credential_unavailable", error_description: error instanceof Error ? error.name : "error" } },
        });
        throw error;
      }
      let outcome: R | Committed<R>;
      try {
        outcome = await execute({ ...ctx, credential: cred });
      } catch (error) {
        if (error instanceof ProviderError) {
          const answer = await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/fail", ids, {
            generation, error: error.toPayload(),
          });
          raiseForFailure(answer, connectionId, generation);
        }
        // The effect may or may not have happened: it must be reconciled before it can run again.
        try {
          await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/ambiguous", ids, {
            generation, reason: describe(error).slice(0, 480) || "execute failed",
          });
        } catch (report) {
          if (!(report instanceof ReviveError) && !(report instanceof LeaseFenced)) throw report;
          // the reaper marks it ambiguous once its claim expires
        }
        throw error;
      }
      const [result, externalRef] = outcome instanceof Committed ? [outcome.result, outcome.externalRef] : [outcome, ""];
      await this.#request("post", "/api/v1/runs/{run_id}/actions/{action_key}/commit", ids, {
        generation, result: jsonable(result), external_ref: externalRef,
      });
      return result;
    }
    throw new ActionAmbiguous(actionKey, key);
  }
}
