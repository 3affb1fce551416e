/**
 * What the SDK throws: the same names and meanings as the Python SDK's `revive_sdk.errors`.
 * `RunParked` is a signal, not a failure: a runtime helper turns it into the runtime's own pause.
 */

export type ErrorData = Record<string, unknown>;

/** Revive answered with an error; `code` is stable (see the worker API's docs). */
export class ReviveError extends Error {
  override name = "ReviveError";
  constructor(
    readonly code: string,
    message: string,
    readonly status: number | null = null,
    readonly data: ErrorData = {},
  ) {
    super(`${code}: ${message}`);
  }
}

/** Revive could not be reached; nothing is known to have been recorded. */
export class ReviveUnavailable extends ReviveError {
  override name = "ReviveUnavailable";
}

/** The run must pause until the account owner reconnects (or an operator settles the case). */
export class RunParked extends Error {
  override name = "RunParked";
  constructor(
    readonly caseId: string,
    readonly connectionId: string | null = null,
    readonly generation: number | null = null,
  ) {
    super(`run parked on recovery case ${caseId}`);
  }
}

/**
 * The operator abandoned (or rejected) the recovery case the run waited on: it will never be resumed. Thrown by
 * `protectAction` for a run Revive already told so (`RUN_ABANDONED`); catch it to end the run your own way.
 */
export class RunAbandoned extends Error {
  override name = "RunAbandoned";
  constructor(
    readonly caseId: string | null,
    readonly runId: string | null = null,
    readonly reason: string = "",
  ) {
    super(`recovery case ${caseId} was abandoned${reason ? `: ${reason}` : ""}`);
  }
}

/** The generation this worker holds has been superseded: reacquire the lease and re-read state. */
export class LeaseFenced extends Error {
  override name = "LeaseFenced";
  constructor(
    readonly generation: number,
    readonly currentGeneration: number | null,
  ) {
    super(`credential generation ${generation} is fenced (current: ${currentGeneration})`);
  }
}

/** A transient provider failure: retry the action after `retryAfter` seconds. */
export class RetryLater extends Error {
  override name = "RetryLater";
  constructor(
    readonly retryAfter: number,
    readonly code: string = "",
  ) {
    super(`transient provider failure ${code}; retry after ${retryAfter}s`);
  }
}

/** The access token expired: refresh it through the vault and retry the action. */
export class RefreshRequired extends Error {
  override name = "RefreshRequired";
  constructor(readonly code: string = "") {
    super(`access token expired (${code}); refresh and retry`);
  }
}

/** The action's outcome is unknown and no `reconcile` callback was given to settle it. */
export class ActionAmbiguous extends Error {
  override name = "ActionAmbiguous";
  constructor(
    readonly actionKey: string,
    readonly idempotencyKey: string,
  ) {
    super(`action ${actionKey} has an unknown outcome; reconcile it by idempotency key ${idempotencyKey}`);
  }
}

/** The provider refused the action and Revive classified it as not recoverable by reconnecting. */
export class ActionFailed extends Error {
  override name = "ActionFailed";
  constructor(
    readonly failureClass: string,
    readonly code: string,
    readonly detail: string,
  ) {
    super(`${failureClass} ${code}: ${detail}`);
  }
}

export type ProviderErrorKind = "timeout" | "connection_error";

/**
 * Throw this from `credential` or `execute` when the provider answered with an error and nothing happened.
 * Pass the provider's raw answer; Revive classifies it (dead grant, transient, expired token, ...).
 */
export class ProviderError extends Error {
  override name = "ProviderError";
  readonly headers: Record<string, string>;
  constructor(
    readonly status: number | null = null,
    readonly body: unknown = null,
    headers: Record<string, string> | Headers = {},
    readonly errorKind: ProviderErrorKind | null = null,
  ) {
    super(`provider error (status ${status})`);
    this.headers = headers instanceof Headers ? Object.fromEntries(headers.entries()) : { ...headers };
  }

  /** The provider's answer as the worker API takes it. */
  toPayload(): { status: number | null; body: unknown; headers: Record<string, string>; error_kind: ProviderErrorKind | null } {
    return { status: this.status, body: this.body ?? null, headers: this.headers, error_kind: this.errorKind };
  }
}

/** The Python SDK's alias: a credential the provider rejected is reported as a `ProviderError`. */
export const CredentialRejected = ProviderError;
export type CredentialRejected = ProviderError;
