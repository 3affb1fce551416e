/**
 * Single-flight refresh: one refresh per (connection, generation) across every worker, through Revive's refresh
 * claim (`POST /connections/{conn}/refresh-claims` and `…/release`). The rules are the Python SDK's
 * (`revive_sdk/flows.py`: `refresh_single_flight`, `credential`; `SingleFlightCredential` in `client.py`).
 *
 * Revive answers with a decision, never a token: `refresh` (this worker holds the round: it refreshes at the
 * provider, stores the new grant where the credential lives, then releases), `wait` (another worker holds it: ask
 * again after `retry_after`), `reload` (a round newer than the credential this worker saw was refreshed: read it
 * again) or `fenced` (a reconnect superseded the generation).
 */

import { hostname } from "node:os";

import type { Revive } from "./client.js";
import { LeaseFenced, RetryLater, ReviveError } from "./errors.js";

type MaybePromise<T> = T | Promise<T>;

/** What one credential helper remembers between calls; helpers that share one share what they know of the rounds. */
export class RefreshMemo {
  /** The refresh round of the credential last returned (0 before any refresh). */
  round = 0;
  /** The credential last returned was rejected: the next call refreshes even if it looks fresh. */
  rejected = false;
  generation = 0;
}

/** A refresh-claim holder name for this worker: host, process and a random part (no secret). */
export function newHolder(): string {
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, "-").slice(0, 60) || "host";
  return `${host}:${process.pid}:${crypto.randomUUID().slice(0, 8)}`;
}

export interface SingleFlightOptions<C> {
  /** Read the current credential from where it lives (Revive's custody, your vault, a broker). */
  load: () => MaybePromise<C>;
  /**
   * Refresh it at the provider and store the new grant there (with rotating refresh tokens, the new refresh token
   * too), returning the new credential; throw `ProviderError` if the provider refuses.
   */
  refresh: () => MaybePromise<C>;
  /** Whether a loaded credential can be used (e.g. not past its expiry); by default always. */
  isFresh?: (credential: C) => boolean;
  holder?: string;
  memo?: RefreshMemo;
  /** How long to wait for another worker's refresh before `RetryLater` (default 120 000 ms). */
  maxWaitMs?: number;
}

/**
 * A `credential` callback for `protectAction` that refreshes once per (connection, generation) across workers.
 * Call `rejected()` when the provider refused a credential it returned (`RefreshRequired`): the next call
 * refreshes (or reloads what another worker refreshed). Revive never sees the credential.
 */
export interface SingleFlightCredential<C> {
  (): Promise<C>;
  rejected(): void;
  /** The refresh round of the credential last returned (0 before any refresh). */
  readonly round: number;
  readonly holder: string;
  readonly connectionId: string;
  readonly memo: RefreshMemo;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Refresh this generation's credential once across all workers; `[credential, round]`. */
export async function refreshSingleFlight<C>(revive: Revive, { connectionId, generation, holder, refresh, reload, seenRound = 0, maxWaitMs = 120_000 }: {
  connectionId: string; generation: number; holder: string; refresh: () => MaybePromise<C>; reload: () => MaybePromise<C>;
  seenRound?: number; maxWaitMs?: number;
}): Promise<[C, number]> {
  let waited = 0;
  for (;;) {
    const answer = await revive.refreshClaim(connectionId, { generation, holder, seenRound });
    if (answer.decision === "fenced") throw new LeaseFenced(generation, answer.current_generation ?? null);
    if (answer.decision === "reload") return [await reload(), answer.round];
    if (answer.decision === "wait") {
      if (waited >= maxWaitMs) throw new RetryLater(Number(answer.retry_after ?? 1), "refresh_in_progress");
      const delay = Number(answer.retry_after ?? 0.2) * 1000;
      await sleep(delay);
      waited += delay;
      continue;
    }
    const release = { generation, holder, round: answer.round };
    let credential: C;
    try {
      credential = await refresh();
    } catch (error) {
      try {
        await revive.refreshRelease(connectionId, { ...release, outcome: "failed" });
      } catch (lost) {
        if (!(lost instanceof ReviveError)) throw lost; // else the claim expires on its own
      }
      throw error;
    }
    await revive.refreshRelease(connectionId, { ...release, outcome: "refreshed" });
    return [credential, answer.round];
  }
}

export function singleFlightCredential<C>(revive: Revive, connectionId: string, options: SingleFlightOptions<C>): SingleFlightCredential<C> {
  const { load, refresh, isFresh = () => true, maxWaitMs } = options;
  const holder = options.holder ?? newHolder();
  const memo = options.memo ?? new RefreshMemo();
  const get = async (): Promise<C> => {
    if (!memo.rejected) {
      const current = await load();
      if (isFresh(current)) return current;
    }
    const { generation } = await revive.lease(connectionId);
    if (generation !== memo.generation) { // rounds count per generation
      memo.generation = generation;
      memo.round = 0;
    }
    const [value, round] = await refreshSingleFlight(revive, {
      connectionId, generation, holder, refresh, reload: load, seenRound: memo.round, maxWaitMs,
    });
    memo.round = round;
    memo.rejected = false;
    return value;
  };
  return Object.defineProperties(get, {
    rejected: { value: () => { memo.rejected = true; } },
    round: { get: () => memo.round },
    holder: { value: holder },
    connectionId: { value: connectionId },
    memo: { value: memo },
  }) as SingleFlightCredential<C>;
}
