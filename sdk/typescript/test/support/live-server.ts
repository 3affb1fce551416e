/**
 * One live Revive server for the TypeScript tests: `tests/conformance/live_server.py` in the repository, a real
 * HTTP server on a free loopback port with its own PostgreSQL database, driven over its stdin (one JSON op a line).
 */

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import path from "node:path";

/** The repository's root (this file runs from `sdk/typescript/build-test/test/support/`). */
export const REPO_ROOT = path.resolve(fileURLToPath(new URL(".", import.meta.url)), "../../../../..");
const STARTUP_MS = 180_000;

export function python(): string {
  if (process.env.REVIVE_PYTHON) return process.env.REVIVE_PYTHON;
  const venv = path.join(REPO_ROOT, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export class LiveServer {
  readonly #child: ChildProcess;
  readonly #waiting: Array<(line: string) => void> = [];
  readonly #lines: string[] = [];
  #stderr = "";
  url = "";
  apiKey = "";

  private constructor(extraEnv: Record<string, string>) {
    const env: NodeJS.ProcessEnv = { ...process.env, ...extraEnv, PYTHONPATH: [path.join(REPO_ROOT, "sdk", "python"), REPO_ROOT].join(path.delimiter) };
    delete env.DJANGO_SETTINGS_MODULE;
    this.#child = spawn(python(), [path.join(REPO_ROOT, "tests", "conformance", "live_server.py")], {
      cwd: REPO_ROOT, env, stdio: ["pipe", "pipe", "pipe"],
    });
    this.#child.stderr!.on("data", (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString()).slice(-8000);
    });
    createInterface({ input: this.#child.stdout! }).on("line", (line) => {
      const waiter = this.#waiting.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    });
  }

  /** Start it; `env` reaches its settings (e.g. `TEMPORAL_ADDRESS` for its Temporal adapter). */
  static async start(env: Record<string, string> = {}): Promise<LiveServer> {
    const server = new LiveServer(env);
    const hello = JSON.parse(await server.#nextLine(STARTUP_MS)) as { url: string; api_key: string };
    server.url = hello.url;
    server.apiKey = hello.api_key;
    return server;
  }

  #nextLine(timeoutMs: number): Promise<string> {
    const queued = this.#lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the live server did not answer in ${timeoutMs} ms:\n${this.#stderr}`)), timeoutMs);
      const onExit = (code: number | null) => {
        clearTimeout(timer);
        reject(new Error(`the live server exited (${code}):\n${this.#stderr}`));
      };
      this.#child.once("exit", onExit);
      this.#waiting.push((line) => {
        clearTimeout(timer);
        this.#child.off("exit", onExit);
        resolve(line);
      });
    });
  }

  /** A server-side step of a scenario (`tests/conformance/ops.py`): register a connection, the owner's reconnect. */
  async perform(op: Record<string, unknown>): Promise<Record<string, unknown>> {
    this.#child.stdin!.write(JSON.stringify(op) + "\n");
    const answer = JSON.parse(await this.#nextLine(60_000)) as { ok: boolean; answer?: Record<string, unknown>; error?: string };
    if (!answer.ok) throw new Error(`server op ${JSON.stringify(op)} failed: ${answer.error}`);
    return answer.answer ?? {};
  }

  /** Stop the server; it drops its database. */
  async stop(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.#child.once("exit", () => resolve()));
    this.#child.stdin!.end();
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), 60_000);
    await exited;
    clearTimeout(timer);
  }
}
