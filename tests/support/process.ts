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

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** Starts main.ts against `databaseUrl` and waits until /ready answers 200. */
export async function spawnService(
  options: { databaseUrl: string; env?: Record<string, string> },
): Promise<ServiceProcess> {
  const port = await freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN],
    env: {
      DATABASE_URL: options.databaseUrl,
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
  (async () => {
    for await (const chunk of child.stderr) text += decoder.decode(chunk, { stream: true });
  })();
  const proc: ServiceProcess = {
    pid: child.pid,
    url: `http://127.0.0.1:${port}`,
    log: () => text,
    kill: (signal) => child.kill(signal),
    status: child.status,
  };
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
  if (!exited) child.kill("SIGKILL");
  throw new Error(`the service did not become ready:\n${text}`);
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
