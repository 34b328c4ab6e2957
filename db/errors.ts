/** PostgreSQL errors classified by SQLSTATE, in one place. */

export interface PgError extends Error {
  code: string;
  position?: string;
  detail?: string;
  hint?: string;
  severity?: string;
}

/** True for an error that came from the PostgreSQL server (it carries a SQLSTATE). */
export function isPgError(e: unknown): e is PgError {
  return e instanceof Error && typeof (e as { code?: unknown }).code === "string" &&
    /^[0-9A-Z]{5}$/.test((e as unknown as { code: string }).code) && (e as { name?: string }).name === "PostgresError";
}

/** Serialization failure or deadlock: the transaction may simply be retried. */
export function isRetryable(e: unknown): boolean {
  return isPgError(e) && (e.code === "40001" || e.code === "40P01");
}

export const UNIQUE_VIOLATION = "23505";
export const FOREIGN_KEY_VIOLATION = "23503";
export const DUPLICATE_TABLE = "42P07";
export const DUPLICATE_OBJECT = "42710";
export const UNDEFINED_TABLE = "42P01";
export const LOCK_NOT_AVAILABLE = "55P03";
export const QUERY_CANCELED = "57014";

/** True for errors in the query's text or meaning (class 42: syntax, undefined objects; 22: data; 0A: unsupported). */
export function isQueryError(e: unknown): e is PgError {
  return isPgError(e) && !isConnectionError(e) &&
    (e.code.startsWith("42") || e.code.startsWith("22") || e.code.startsWith("0A"));
}

/** Client-side failures to reach the server (postgres.js's codes and the socket's). */
const CLIENT_CONNECTION_CODES = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EPIPE",
  "ETIMEDOUT",
]);

/**
 * Connection-level trouble: server gone or shutting down, the session ended by an administrator, too many
 * clients, or any FATAL error, which ends the session (a database refusing connections, 55000; connect permission
 * revoked, 42501; the database dropped, 3D000) and so is never the query's fault.
 */
export function isConnectionError(e: unknown): boolean {
  if (isPgError(e)) {
    return e.code.startsWith("08") || e.code === "57P01" || e.code === "57P02" || e.code === "57P03" ||
      e.code === "53300" || e.severity === "FATAL";
  }
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && CLIENT_CONNECTION_CODES.has(code);
}

/** A connection error's reason for a client: the server's message, or the client's code (no address or SQL). */
export function connectionFailure(e: unknown): string {
  if (isPgError(e)) return e.message;
  return `connection failed: ${String((e as { code?: unknown } | null)?.code ?? "unknown error")}`;
}

/** Runs `fn`, retrying serialization failures and deadlocks with jittered backoff. */
export async function withRetry<T>(fn: () => Promise<T>, attempts = 5): Promise<T> {
  for (let i = 1;; i++) {
    try {
      return await fn();
    } catch (e) {
      if (!isRetryable(e) || i >= attempts) throw e;
      await new Promise((r) => setTimeout(r, Math.random() * 20 * 2 ** i));
    }
  }
}
