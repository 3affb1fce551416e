/** What Revive's Temporal adapter, the activity helper and the workflow helper agree on (the Python SDK's names). */

export const CREDENTIAL_REJECTED = "CredentialRejected";
export const SIGNAL = "revive_reauthorized";
export const QUERY = "revive_parked";
export const RESUME_KIND = "resume";

/** The details of a `CredentialRejected` activity failure. */
export interface ParkedDetails {
  case_id: string;
  connection_id: string | null;
  generation: number | null;
}

/** The `revive_reauthorized` signal's payload, as Revive's server sends it. */
export interface ResumeSignal {
  revive: typeof RESUME_KIND;
  run_id?: string;
  cases?: string[];
  generations?: Record<string, number>;
  rejected?: Record<string, number>;
}
