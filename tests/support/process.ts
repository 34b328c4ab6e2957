/** Runs the real service (main.ts) as a child process, for tests of several instances, signals and crashes. */
import { freePort } from "../../db/embedded.ts";

export interface ServiceProcess {
  pid: number;
  url: string;
  /** Everything the process wrote to stderr so far (its JSON log). */
  log(): string;
  kill(signal: Deno.Signal): void;
  status: Promise<Deno.CommandStatus>;
}

export interface ServiceOptions {
  /** The server to use; omitted: the embedded PostgreSQL (set TRICKLE_DATA_DIR in `env`). */
  databaseUrl?: string;
  /** The HTTP port; omitted: a free one. */
  port?: number;
  env?: Record<string, string>;
  /** The main.ts to run (another release's, unpacked) and its directory; default this checkout's. */
  main?: string;
}

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** Starts main.ts without waiting for it; see `spawnService` for a started service. */
export async function launchService(options: ServiceOptions = {}): Promise<ServiceProcess> {
  const port = options.port ?? await freePort();
  const main = options.main ?? MAIN;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main],
    // Deno reads deno.json (imports, versions) from the working directory.
    cwd: new URL(".", `file://${main}`).pathname,
    env: {
      ...(options.databaseUrl === undefined ? {} : { DATABASE_URL: options.databaseUrl }),
      TRICKLE_PORT: String(port),
      TRICKLE_SCHEDULER_INTERVAL_MS: "200",
      TRICKLE_LOG_LEVEL: "info",
      ...options.env,
    },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const drained = (async () => {
    for await (const chunk of child.stderr) text += decoder.decode(chunk, { stream: true });
  })();
  return {
    pid: child.pid,
    url: `http://127.0.0.1:${port}`,
    log: () => text,
    kill: (signal) => child.kill(signal),
    // Resolves once the log is read to its end too, so a test that awaited the exit sees every line.
    status: child.status.then(async (s) => (await drained, s)),
  };
}

/** Starts main.ts (against `databaseUrl`, or the embedded server) and waits until /ready answers 200. */
export async function spawnService(options: ServiceOptions = {}): Promise<ServiceProcess> {
  const proc = await launchService(options);
  const deadline = Date.now() + 30_000;
  let exited = false;
  proc.status.then(() => (exited = true));
  while (Date.now() < deadline && !exited) {
    try {
      const r = await fetch(`${proc.url}/ready`);
      await r.body?.cancel();
      if (r.status === 200) return proc;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!exited) proc.kill("SIGKILL");
  throw new Error(`the service did not become ready:\n${proc.log()}`);
}

/** Polls `check` every 100 ms until it returns true or `ms` pass; returns whether it did. */
export async function eventually(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return await check();
}

/** The JSON log lines of a service whose `msg` is `msg`. */
export function logLines(proc: ServiceProcess, msg: string): Record<string, unknown>[] {
  return proc.log().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

/** Kills whatever is still running of `procs` and waits for each to exit. */
export async function stopAll(procs: ServiceProcess[]): Promise<void> {
  for (const p of procs) {
    try {
      p.kill("SIGKILL");
    } catch {
      // already gone
    }
    await p.status;
  }
}

/** POSTs `body` as JSON (or nothing, when it is undefined) to the service process. */
export async function postJson(proc: ServiceProcess, path: string, body?: unknown): Promise<Response> {
  return await fetch(proc.url + path, {
    method: "POST",
    ...(body === undefined ? {} : { headers: { "content-type": "application/json" }, body: JSON.stringify(body) }),
  });
}
