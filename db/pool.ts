/** The one place that creates postgres.js clients: one pool per managed database. */
import postgres from "postgres";

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
}

/** The URL with its database replaced. */
export function urlForDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = "/" + encodeURIComponent(database);
  return u.toString();
}

/** A pool on `url`; int8 and numeric counts come back as JS numbers (catalog values stay far below 2^53). */
export function connect(url: string, options: PoolOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    idle_timeout: 30,
    connect_timeout: 10,
    // postgres.js waits longer before each reconnection after a failed one (up to 20 s), queries queued meanwhile:
    // a request on a database that was down would hang that long after it is back, or before failing. Each query
    // tries at once instead, and fails at once (503 DatabaseUnavailable) while the database is unreachable.
    backoff: () => 0,
    onnotice: () => {},
    connection: { application_name: options.applicationName ?? `trickle:${Deno.pid}` },
    types: {
      bigint: { to: 20, from: [20], serialize: (x: number) => String(x), parse: (x: string) => Number(x) },
    },
  });
}

/** Server version as an integer (150004 for 15.4). */
export async function serverVersion(sql: Sql): Promise<number> {
  const [row] = await sql<{ v: string }[]>`SELECT current_setting('server_version_num') AS v`;
  return Number(row!.v);
}

/**
 * A connection of its own (a one-connection client), for state that lives in a session: an advisory lock, a marker
 * in `application_name`. Not `sql.reserve()`: in postgres.js 3.4.9 a query on a reserved connection whose server
 * process has died throws an uncaught exception that ends the whole process (porsager/postgres#1208), and a queued
 * reserve can wait for ever when a pool connection closes meanwhile (#1195). A one-connection client reconnects on
 * its next query instead; what the old session held (a lock, a `set_config`) is then gone, so a caller that holds
 * such state checks it (as leadership does) rather than assume it. `applicationName` is set at every (re)connection.
 */
export function connectSession(url: string, applicationName?: string): Sql {
  return connect(url, { max: 1, ...(applicationName === undefined ? {} : { applicationName }) });
}

/**
 * Whether an uncaught error is postgres.js 3.4.9 writing to a connection whose socket is already gone: when the server
 * ends a session in the middle of a transaction, the driver's buffered write (or the ROLLBACK it sends) runs from a
 * `setImmediate` after the socket was closed, and throws outside any promise (porsager/postgres#1154, #1208; no fix
 * released). The queries of that connection have already failed with CONNECTION_CLOSED through their promises, so the
 * write had nothing left to do; without this check the uncaught TypeError ends the whole service. Matched narrowly:
 * the TypeError of a null socket's `write`, raised in the driver's own connection module.
 */
export function isDriverWriteOnClosedSocket(error: unknown): boolean {
  return error instanceof TypeError && /\bnull\b.*\bwrite\b|\bwrite\b.*\bnull\b/.test(error.message) &&
    /postgres[@/].*connection\.js/.test(error.stack ?? "") && /\bnextWrite\b/.test(error.stack ?? "");
}

/**
 * Whether an unhandled rejection is a query of postgres.js failing because its connection was lost (the server ended
 * the session: 57P01-57P03, or the socket closed) with nobody awaiting it. It happens when sessions are ended under
 * the driver (pg_terminate_backend, failover) at the wrong moment: a query the driver itself queued (the rollback of
 * a transaction already failed, a statement sent together with one that failed) is rejected after its caller has its
 * error from another promise. Nothing is left to do for it; without this check the rejection ends the whole service.
 * Matched narrowly: the connection-loss codes, on an error raised in the driver's own connection module.
 */
export function isDriverConnectionLoss(reason: unknown): boolean {
  if (!(reason instanceof Error)) return false;
  const code = (reason as { code?: unknown }).code;
  const lost = [
    "57P01",
    "57P02",
    "57P03",
    "CONNECTION_CLOSED",
    "CONNECTION_DESTROYED",
    "CONNECTION_ENDED",
    "ECONNRESET",
  ];
  return typeof code === "string" && lost.includes(code) && /postgres[@/].*connection\.js/.test(reason.stack ?? "");
}
