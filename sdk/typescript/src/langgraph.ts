/**
 * LangGraph.js helpers: a rejected credential pauses the node with `interrupt(...)`; the same thread resumes
 * with `Command({ resume })` once Revive has released the run.
 *
 * Inside a node:
 *
 *     import * as reviveLg from "revive-sdk/langgraph";
 *
 *     async function sendBrief(state) {
 *       const sent = await reviveLg.protectAction(revive, {
 *         runId: state.runId, checkpointId: "05", connectionId: "conn_microsoft_ops", actionKey: "send-briefing",
 *         credential: () => vault.lease("conn_microsoft_ops"),
 *         execute: ({ credential, idempotencyKey }) => graph.sendMail(message, { credential, idempotencyKey }),
 *         reconcile: ({ idempotencyKey }) => graph.findMailByIdempotencyKey(idempotencyKey),
 *       });
 *       return { sent };
 *     }
 *
 * When the provider rejects the credential, `protectAction` calls `interrupt` with a payload naming the recovery
 * case; LangGraph saves the thread at that checkpoint and `invoke` returns. Revive's server resumes Python graphs
 * itself; a LangGraph.js graph lives in the worker (`registerRun` marks the run `resumed_by: "worker"`, so Revive's
 * delivery only releases it), and the worker resumes it: `resumeWhenReleased` (or one
 * `resumeIfReleased` per poll) waits until Revive no longer holds the run's cases, then invokes the *same*
 * `thread_id` with `new Command({ resume: { revive: "resume", ... } })` (never `updateState`). The node runs again
 * from its start; committed actions replay their results, and the rejected action runs with the new generation.
 *
 * The payloads are the Python helper's (`revive_sdk.langgraph`). Only this module imports LangGraph.
 */

import { Command, interrupt } from "@langchain/langgraph";

import { type ProtectActionOptions, type Revive, type RunRecord } from "./client.js";
import { RunParked } from "./errors.js";

export const PARKED_KIND = "parked";
export const RESUME_KIND = "resume";
/** A node that parks this often on one action is looping: stop instead of waiting forever. */
export const MAX_PARKS = 32;

export interface ParkedPayload {
  revive: typeof PARKED_KIND;
  run_id: string;
  cases: string[];
  connections: Record<string, number | null>;
}

export interface ResumePayload {
  revive: typeof RESUME_KIND;
  run_id: string;
  cases: string[];
  early?: boolean;
}

/** What the interrupt shows: which cases hold the run, never a credential. */
export function parkedPayload(parked: RunParked[], runId: string): ParkedPayload {
  const connections: Record<string, number | null> = {};
  for (const p of parked) if (p.connectionId) connections[p.connectionId] = p.generation;
  return { revive: PARKED_KIND, run_id: runId, cases: parked.map((p) => p.caseId), connections };
}

export function isParkedInterrupt(value: unknown): value is ParkedPayload {
  return typeof value === "object" && value !== null && (value as { revive?: unknown }).revive === PARKED_KIND;
}

function covers(value: unknown, caseIds: string[]): value is ResumePayload {
  if (typeof value !== "object" || value === null || (value as { revive?: unknown }).revive !== RESUME_KIND) return false;
  const released = new Set((value as ResumePayload).cases ?? []);
  return caseIds.every((c) => released.has(c));
}

async function blockingCases(revive: Revive, runId: string, caseIds: Iterable<string>): Promise<string[]> {
  const wanted = new Set(caseIds);
  const status = await revive.recoveryStatus(runId);
  return status.cases.filter((c) => c.blocking && wanted.has(c.case_id)).map((c) => c.case_id);
}

/**
 * Pause the node until this run is resumed for every case in `parked`; return the resume value.
 *
 * LangGraph matches the `interrupt` calls of a re-executed node by position, so a resume value meant for an
 * earlier park of this node can come back here: one that does not name our cases is not ours, and the node
 * interrupts again. With `revive` given, a run whose cases were released before it reached this point does not
 * wait.
 */
export async function waitForReauthorization(
  parked: RunParked | RunParked[], { runId, revive }: { runId: string; revive?: Revive },
): Promise<ResumePayload> {
  const items = Array.isArray(parked) ? parked : [parked];
  const caseIds = [...new Set(items.map((p) => p.caseId))];
  if (revive && (await blockingCases(revive, runId, caseIds)).length === 0) {
    return { revive: RESUME_KIND, run_id: runId, cases: caseIds.sort(), early: true };
  }
  const payload = parkedPayload(items, runId);
  for (let i = 0; i < MAX_PARKS; i++) {
    const value: unknown = interrupt(payload);
    if (covers(value, caseIds)) return value;
  }
  throw new Error(`run ${runId} was resumed ${MAX_PARKS} times without a resume for ${caseIds.join(", ")}`);
}

/**
 * `revive.protectAction` for a LangGraph.js node: a parked run becomes an `interrupt`, then the action is tried
 * again (leasing the connection's new generation; a committed action replays its result).
 */
export async function protectAction<R = unknown, C = unknown>(revive: Revive, options: ProtectActionOptions<R, C>): Promise<R> {
  for (let i = 0; i < MAX_PARKS; i++) {
    try {
      return await revive.protectAction(options);
    } catch (error) {
      if (!(error instanceof RunParked)) throw error;
      await waitForReauthorization(error, { runId: options.runId, revive });
    }
  }
  throw new Error(`action ${options.actionKey} of run ${options.runId} parked ${MAX_PARKS} times`);
}

/**
 * Tell Revive which thread holds the run, and the graph's name. The run is marked `resumed_by: "worker"`: Revive
 * cannot load a LangGraph.js graph, so after the reconnect it releases the run and this worker resumes the thread
 * (`resumeWhenReleased`).
 */
export function registerRun(revive: Revive, { runId, threadId, graph, workflowName }: {
  runId: string; threadId: string; graph: string; workflowName: string;
}): Promise<RunRecord> {
  return revive.registerRun({
    runId, runtime: "langgraph", workflowName, runtimeRef: { thread_id: threadId, graph, resumed_by: "worker" },
  });
}

/** The invoke config of a run: its thread is its durable cursor, the same before and after the resume. */
export function runConfig(threadId: string, configurable: Record<string, unknown> = {}) {
  return { configurable: { thread_id: threadId, ...configurable } };
}

/** The part of a compiled LangGraph.js graph the resume needs. */
export interface ResumableGraph {
  getState(config: ReturnType<typeof runConfig>): Promise<{ tasks: ReadonlyArray<{ interrupts: ReadonlyArray<{ value?: unknown }> }> }>;
  invoke(input: unknown, config: ReturnType<typeof runConfig>): Promise<unknown>;
}

/** The Revive interrupts the thread is waiting on (empty when it is not parked). */
export async function parkedInterrupts(graph: ResumableGraph, threadId: string): Promise<ParkedPayload[]> {
  const state = await graph.getState(runConfig(threadId));
  return state.tasks.flatMap((t) => t.interrupts.map((i) => i.value)).filter(isParkedInterrupt);
}

export type ResumeAttempt =
  | { resumed: true; cases: string[]; output: unknown }
  | { resumed: false; reason: "not_parked" | "blocked"; blocking: string[] };

/**
 * Resume the thread with `Command({ resume })` if it is parked and Revive holds none of its cases any more.
 * Safe to call again: a thread that is not parked is left alone.
 */
export async function resumeIfReleased(revive: Revive, graph: ResumableGraph, { runId, threadId }: {
  runId: string; threadId: string;
}): Promise<ResumeAttempt> {
  const parked = await parkedInterrupts(graph, threadId);
  if (parked.length === 0) return { resumed: false, reason: "not_parked", blocking: [] };
  const cases = [...new Set(parked.flatMap((p) => p.cases))].sort();
  const blocking = await blockingCases(revive, runId, cases);
  if (blocking.length > 0) return { resumed: false, reason: "blocked", blocking };
  const resume: ResumePayload = { revive: RESUME_KIND, run_id: runId, cases };
  const output = await graph.invoke(new Command({ resume }), runConfig(threadId));
  return { resumed: true, cases, output };
}

/** Poll Revive until the run's cases are released, then resume the thread; returns the graph's output. */
export async function resumeWhenReleased(revive: Revive, graph: ResumableGraph, { runId, threadId, pollMs = 1000, signal }: {
  runId: string; threadId: string; pollMs?: number; signal?: AbortSignal;
}): Promise<ResumeAttempt> {
  for (;;) {
    signal?.throwIfAborted();
    const attempt = await resumeIfReleased(revive, graph, { runId, threadId });
    if (attempt.resumed || attempt.reason === "not_parked") return attempt;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
