export {
  ActionAmbiguous,
  ActionFailed,
  CredentialRejected,
  LeaseFenced,
  ProviderError,
  RefreshRequired,
  RetryLater,
  ReviveError,
  ReviveUnavailable,
  RunAbandoned,
  RunParked,
} from "./errors.js";
export type { ErrorData, ProviderErrorKind } from "./errors.js";
export { Committed, Reconciliation, Revive, raiseForFailure } from "./client.js";
export { RefreshMemo, newHolder } from "./refresh.js";
export type { SingleFlightCredential, SingleFlightOptions } from "./refresh.js";
export type {
  ActionContext,
  ActionRecord,
  BeginAnswer,
  CheckpointRecord,
  FailureAnswer,
  Lease,
  ProtectActionOptions,
  RefreshClaimAnswer,
  RecoveryStatus,
  ReviveOptions,
  RunRecord,
  Runtime,
} from "./client.js";
export type { components, paths } from "./generated/worker-api.js";
