/** application/problem+json answers (RFC 9457) with a stable `code`. */
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { connectionFailure, isConnectionError } from "../db/errors.ts";
import { databaseUnavailable, ERROR_CODES, type ErrorCode, TrickleError } from "../engine/errors.ts";
import type { Logger } from "../log.ts";
import { type AppEnv, requestIds } from "./env.ts";

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  [extra: string]: unknown;
}

/** The problem body for an error code: its status and title come from the code table. */
export function problem(code: ErrorCode, detail: string, extra: Record<string, unknown> = {}): Problem {
  const { status, title } = ERROR_CODES[code];
  return { type: `urn:trickle:problem:${code}`, title, status, detail, code, ...extra };
}

/** A Response carrying a problem. */
export function problemResponse(p: Problem, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(p), {
    status: p.status,
    headers: { "content-type": "application/problem+json", ...headers },
  });
}

/** The codes of the HTTPExceptions hono throws (malformed JSON is a 400, an over-long body a 413). */
const HTTP_EXCEPTION_CODES: Record<number, ErrorCode> = {
  400: "BadRequest",
  401: "Unauthorized",
  413: "PayloadTooLarge",
};

/** Seconds a client is asked to wait before retrying on an unavailable database. */
const RETRY_AFTER_SECONDS = 5;

/** Turns any thrown error into a problem response; unknown errors are logged and answered opaquely. */
export function errorToResponse(err: unknown, c: Context<AppEnv>, log: Logger): Response {
  const ids = requestIds(c);
  if (isConnectionError(err)) {
    // The server is down, refuses connections to this database, or ended the session: the client may retry; the
    // pool opens new connections on the next request, so recovery needs no restart.
    const database = c.get("database");
    const e = databaseUnavailable(database, connectionFailure(err));
    log.warn("database unavailable", { ...ids, database, path: c.req.path, error: err });
    return problemResponse(problem(e.code, e.message, { ...e.extra, ...ids }), {
      "retry-after": String(RETRY_AFTER_SECONDS),
    });
  }
  if (err instanceof TrickleError) {
    return problemResponse(problem(err.code, err.message, { ...err.extra, ...ids }));
  }
  if (err instanceof HTTPException) {
    if (err.res !== undefined) return err.res;
    // What hono's own middleware and validators throw; any other status is unexpected and answered as below.
    if (err.status === 415) {
      return problemResponse(
        problem("UnsupportedMediaType", "The request body must be JSON, sent with content-type: application/json", ids),
      );
    }
    const code = HTTP_EXCEPTION_CODES[err.status];
    if (code !== undefined) return problemResponse(problem(code, err.message || ERROR_CODES[code].title, ids));
  }
  // SQL text, parameters and internal messages never reach a response; the log has the detail.
  log.error("unhandled error", { ...ids, path: c.req.path, error: err, stack: (err as Error)?.stack });
  return problemResponse(problem("InternalError", "An internal error occurred; the log has the detail", ids));
}
