/**
 * Temporal (TypeScript SDK), activity side: a rejected credential fails the activity for good with a
 * non-retryable `ApplicationFailure` of type `CredentialRejected` whose details name the recovery case (retrying
 * with the same credential could only fail again). The workflow side — the `revive_reauthorized` signal and the
 * durable wait for it — is `revive-sdk/temporal/workflow`, which imports only `@temporalio/workflow`.
 *
 *     // activities.ts
 *     import { protectAction, registerRun } from "revive-sdk/temporal";
 *     export async function sendBrief(input) {
 *       return protectAction(revive, { runId: input.runId, checkpointId: "05", connectionId: "conn_microsoft_ops",
 *         actionKey: "send-briefing", credential: () => vault.lease("conn_microsoft_ops"),
 *         execute: ({ credential, idempotencyKey }) => graph.sendMail(message, { credential, idempotencyKey }),
 *         reconcile: ({ idempotencyKey }) => graph.findMailByIdempotencyKey(idempotencyKey) });
 *     }
 *
 * Revive's server delivers the resume itself: its Temporal adapter signals `revive_reauthorized` to the
 * workflow by workflow id and run id (as registered by `registerRun`). The names and payloads are the Python
 * helper's (`revive_sdk.temporal`), so workers in either language resume the same way.
 */

import { Context } from "@temporalio/activity";
import { ApplicationFailure } from "@temporalio/common";

import type { ProtectActionOptions, Revive, RunRecord } from "./client.js";
import { RunParked } from "./errors.js";
import { CREDENTIAL_REJECTED, type ParkedDetails } from "./temporal-names.js";

export { CREDENTIAL_REJECTED, QUERY, RESUME_KIND, SIGNAL } from "./temporal-names.js";
export type { ParkedDetails, ResumeSignal } from "./temporal-names.js";

/** The activity failure that parks the workflow: non-retryable, with the case in its details. */
export function credentialRejected(parked: RunParked): ApplicationFailure {
  const details: ParkedDetails = { case_id: parked.caseId, connection_id: parked.connectionId, generation: parked.generation };
  return ApplicationFailure.create({
    message: `credential rejected; run parked on recovery case ${parked.caseId}`,
    type: CREDENTIAL_REJECTED,
    nonRetryable: true,
    details: [details],
  });
}

/** `revive.protectAction` inside an activity: `RunParked` becomes the non-retryable `CredentialRejected` failure. */
export async function protectAction<R = unknown, C = unknown>(revive: Revive, options: ProtectActionOptions<R, C>): Promise<R> {
  try {
    return await revive.protectAction(options);
  } catch (error) {
    if (error instanceof RunParked) throw credentialRejected(error);
    throw error;
  }
}

/** From inside an activity: register the workflow as a Revive run (its id defaults to the workflow id). */
export function registerRun(revive: Revive, { workflowName, runId }: { workflowName: string; runId?: string }): Promise<RunRecord> {
  const info = Context.current().info;
  const execution = info.workflowExecution;
  if (!execution) throw new TypeError("registerRun needs an activity scheduled by a workflow");
  return revive.registerRun({
    runId: runId ?? execution.workflowId,
    runtime: "temporal",
    workflowName,
    runtimeRef: { workflow_id: execution.workflowId, run_id: execution.runId, namespace: info.workflowNamespace },
  });
}
