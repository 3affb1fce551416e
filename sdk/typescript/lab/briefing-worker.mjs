/**
 * The recovery lab's workflow worker in TypeScript (`recovery_lab --sdk typescript`): the seed's "Nightly executive
 * briefing" as a LangGraph.js graph of five checkpoints, every mutating step through `revive-sdk/langgraph`.
 *
 *     node sdk/typescript/lab/briefing-worker.mjs --run-id R --thread-id T --mode run|continue|resume \
 *          --state '{...}' --checkpoints FILE
 *
 * `run` invokes the graph with the state, `continue` invokes the thread again (after a failed step), `resume` only
 * waits to resume a thread another process parked. A parked run waits in this process until Revive releases it
 * (`resumeWhenReleased`), then resumes the same thread with Command({ resume }). Checkpoints are kept in FILE, so a
 * second process can take over from a killed one.
 *
 * Reports are JSON lines on stdout ({"report": "parked" | "done" | "error", ...}). The credential comes from the
 * lab's credential custody through the lab process, which stands in for a vault: the worker asks with one line on
 * stdout ({"vault": {...}}) and reads the access token, or the provider's refusal, on stdin. Revive's address and
 * worker key come from REVIVE_LAB_URL and REVIVE_LAB_API_KEY.
 */

import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import { Annotation, END, MemorySaver, START, StateGraph } from "@langchain/langgraph";
import { ProviderError, Revive } from "revive-sdk";
import * as reviveLg from "revive-sdk/langgraph";

const STEPS = [
  ["01", "collect calendar", "collect_calendar_01"],
  ["02", "collect inbox", "collect_inbox_02"],
  ["03", "rank risks", "rank_risks_03"],
  ["04", "record summary", "record_summary_04"],
  ["05", "prepare brief", "send_exec_05"],
];
const SEND_ACTION = "send_exec_05";
const WORKFLOW = "Nightly executive briefing";
const MAIL_TIMEOUT_MS = Number(process.env.REVIVE_LAB_MAIL_TIMEOUT ?? "1.0") * 1000;

const { values: args } = parseArgs({
  options: {
    "run-id": { type: "string" }, "thread-id": { type: "string" }, mode: { type: "string", default: "run" },
    state: { type: "string", default: "{}" }, checkpoints: { type: "string" },
  },
});
const say = (message) => process.stdout.write(JSON.stringify({ ...message, pid: process.pid }) + "\n");

/** LangGraph.js's MemorySaver, kept in a file after every write: a checkpointer that outlives the process. */
class FileSaver extends MemorySaver {
  constructor(path) {
    super();
    this.path = path;
    if (existsSync(path)) {
      const data = JSON.parse(readFileSync(path, "utf8"), (_, v) => (v && typeof v === "object" && "$b64" in v ? new Uint8Array(Buffer.from(v.$b64, "base64")) : v));
      this.storage = data.storage;
      this.writes = data.writes;
    }
  }
  save() {
    const text = JSON.stringify({ storage: this.storage, writes: this.writes }, (_, v) => (v instanceof Uint8Array ? { $b64: Buffer.from(v).toString("base64") } : v));
    writeFileSync(`${this.path}.tmp`, text);
    renameSync(`${this.path}.tmp`, this.path);
  }
  async put(...a) {
    const out = await super.put(...a);
    this.save();
    return out;
  }
  async putWrites(...a) {
    await super.putWrites(...a);
    this.save();
  }
}

/** The vault: the lab process answers each credential request on stdin. */
const answers = new Map();
createInterface({ input: process.stdin }).on("line", (line) => {
  const answer = JSON.parse(line);
  answers.get(answer.id)?.(answer);
  answers.delete(answer.id);
});
let asked = 0;
async function credential(state) {
  const id = ++asked;
  const answer = await new Promise((resolve) => {
    answers.set(id, resolve);
    say({ vault: { id, connection_id: state.connection_id } });
  });
  if (answer.error) throw new ProviderError(answer.error.status, answer.error.body, answer.error.headers ?? {});
  return answer.token;
}

async function sendBrief(state, { credential: token, idempotencyKey, generation }) {
  const response = await fetch(`${state.mail_url}/v1.0/me/sendMail`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Idempotency-Key": idempotencyKey, "Content-Type": "application/json" },
    body: JSON.stringify({ subject: WORKFLOW, to: state.recipient ?? "exec-team@contoso.example", run_id: state.run_id, generation, pid: process.pid }),
    signal: AbortSignal.timeout(MAIL_TIMEOUT_MS),
  });
  if (response.status >= 400) throw new ProviderError(response.status, await response.text(), response.headers);
  return response.json();
}

async function findBrief(state, idempotencyKey) {
  await credential(state); // Graph's message lookup needs a token too
  const response = await fetch(`${state.mail_url}/v1.0/me/messages?idempotencyKey=${encodeURIComponent(idempotencyKey)}`);
  if (!response.ok) throw new Error(`message lookup answered ${response.status}`);
  return (await response.json()).value[0] ?? null;
}

const revive = new Revive({ url: process.env.REVIVE_LAB_URL, apiKey: process.env.REVIVE_LAB_API_KEY });
const State = Annotation.Root({
  run_id: Annotation(), connection_id: Annotation(), token_url: Annotation(), mail_url: Annotation(), recipient: Annotation(),
  log: Annotation({ reducer: (a, b) => a.concat(b), default: () => [] }),
});

function step([checkpoint, label, actionKey]) {
  return async (state) => {
    const common = { runId: state.run_id, checkpointId: checkpoint, connectionId: state.connection_id, actionKey };
    const result = actionKey === SEND_ACTION
      ? await reviveLg.protectAction(revive, {
        ...common,
        credential: () => credential(state),
        execute: (ctx) => sendBrief(state, ctx),
        reconcile: ({ idempotencyKey }) => findBrief(state, idempotencyKey),
      })
      : await reviveLg.protectAction(revive, {
        ...common, execute: ({ idempotencyKey }) => ({ step: `${checkpoint} / ${label}`, key: idempotencyKey.slice(-12) }),
      });
    return { log: [{ checkpoint, pid: process.pid, result }] };
  };
}

let builder = new StateGraph(State);
let previous = START;
for (const s of STEPS) {
  const name = `${s[0]}_${s[1].replaceAll(" ", "_")}`;
  builder = builder.addNode(name, step(s)).addEdge(previous, name);
  previous = name;
}
const graph = builder.addEdge(previous, END).compile({ checkpointer: new FileSaver(args.checkpoints) });
const runId = args["run-id"];
const threadId = args["thread-id"];

try {
  if (args.mode !== "resume") await graph.invoke(args.mode === "run" ? JSON.parse(args.state) : null, reviveLg.runConfig(threadId));
  for (;;) {
    const parked = await reviveLg.parkedInterrupts(graph, threadId);
    if (parked.length === 0) break;
    say({ report: "parked", interrupts: parked });
    await reviveLg.resumeWhenReleased(revive, graph, { runId, threadId, pollMs: 200 });
  }
  const final = await graph.getState(reviveLg.runConfig(threadId));
  say({ report: "done", log: final.values.log ?? [] });
  process.exit(0);
} catch (error) {
  say({ report: "error", error: `${error?.name}: ${error?.message}` });
  process.exit(0);
}
