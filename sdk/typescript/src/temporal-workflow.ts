/**
 * Temporal (TypeScript SDK), workflow side: the `revive_reauthorized` signal and the durable wait for it.
 * Imports only `@temporalio/workflow`, so it bundles into workflow code.
 *
 *     import { proxyActivities } from "@temporalio/workflow";
 *     import { reviveRecovery } from "revive-sdk/temporal/workflow";
 *
 *     const { prepareBrief, sendBrief } = proxyActivities<typeof activities>({ startToCloseTimeout: "30 seconds" });
 *
 *     export async function briefing(request: Request) {
 *       const revive = reviveRecovery();            // first thing: installs the signal and query handlers
 *       const prepared = await revive.run(() => prepareBrief(request));
 *       return await revive.run(() => sendBrief(prepared));
 *     }
 *
 * `run` calls the activity; on a `CredentialRejected` failure it waits durably (`condition`) until the
 * `revive_reauthorized` signal releases the case — it names the case, or brings a generation newer than the
 * rejected one — then calls the activity again, which leases the new generation, replays what was committed and
 * runs the rest. The handler keeps the highest generation per connection and every case it was told of: a signal
 * that arrives before the workflow reaches its wait is kept, and a duplicate changes nothing.
 */

import { ActivityFailure, ApplicationFailure, condition, defineQuery, defineSignal, setHandler } from "@temporalio/workflow";

import { CREDENTIAL_REJECTED, QUERY, RESUME_KIND, SIGNAL, type ParkedDetails, type ResumeSignal } from "./temporal-names.js";

export { CREDENTIAL_REJECTED, QUERY, RESUME_KIND, SIGNAL } from "./temporal-names.js";
export type { ParkedDetails, ResumeSignal } from "./temporal-names.js";

export const reauthorizedSignal = defineSignal<[ResumeSignal]>(SIGNAL);
export const parkedQuery = defineQuery<ParkedDetails[]>(QUERY);

/** The case an activity failure parked the run on, or `null` if it is another failure. */
export function parkedDetails(error: unknown): ParkedDetails | null {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  if (cause instanceof ApplicationFailure && cause.type === CREDENTIAL_REJECTED) {
    const details = cause.details?.[0] as ParkedDetails | undefined;
    if (details && typeof details === "object" && details.case_id) return details;
  }
  return null;
}

export class ReviveRecovery {
  readonly generations = new Map<string, number>();
  readonly cases = new Set<string>();
  readonly parked: ParkedDetails[] = [];
  resumes = 0;

  /** Record what Revive released. Idempotent: generations only go up, cases only accumulate. */
  onReauthorized(payload: ResumeSignal): void {
    if (typeof payload !== "object" || payload === null || payload.revive !== RESUME_KIND) return;
    for (const [connectionId, generation] of Object.entries(payload.generations ?? {})) {
      if (Number(generation) > (this.generations.get(connectionId) ?? 0)) this.generations.set(connectionId, Number(generation));
    }
    for (const caseId of payload.cases ?? []) this.cases.add(caseId);
  }

  released(parked: ParkedDetails): boolean {
    if (this.cases.has(parked.case_id)) return true;
    const { connection_id: connectionId, generation } = parked;
    return !!connectionId && generation !== null && (this.generations.get(connectionId) ?? 0) > generation;
  }

  /** Wait durably until Revive releases the case in `parked` (a signal received earlier counts). */
  async wait(parked: ParkedDetails): Promise<void> {
    this.parked.push(parked);
    try {
      await condition(() => this.released(parked));
    } finally {
      this.parked.splice(this.parked.indexOf(parked), 1);
    }
    this.resumes += 1;
  }

  /** Call an activity; on `CredentialRejected`, wait for the reconnect and call it again. */
  async run<T>(activity: () => Promise<T>, { maxParks = 32 }: { maxParks?: number } = {}): Promise<T> {
    for (let i = 0; i < maxParks; i++) {
      try {
        return await activity();
      } catch (error) {
        const parked = parkedDetails(error);
        if (!parked) throw error;
        await this.wait(parked);
      }
    }
    throw ApplicationFailure.nonRetryable(`activity parked ${maxParks} times`, "ReviveParkLimit");
  }
}

/** Install the signal and query handlers in the current workflow; call it first thing in the workflow function. */
export function reviveRecovery(): ReviveRecovery {
  const recovery = new ReviveRecovery();
  setHandler(reauthorizedSignal, (payload) => recovery.onReauthorized(payload));
  setHandler(parkedQuery, () => [...recovery.parked]);
  return recovery;
}
