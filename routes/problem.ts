/** application/problem+json answers (RFC 9457) with a stable `code`. */
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { connectionFailure, isConnectionError } from "../db/errors.ts";
import { databaseUnavailable, TrickleError } from "../engine/errors.ts";
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

const TITLES: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  409: "Conflict",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  422: "Unprocessable Content",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** The problem body for an error code. */
export function problem(status: number, code: string, detail: string, extra: Record<string, unknown> = {}): Problem {
  return { type: `urn:trickle:problem:${code}`, title: TITLES[status] ?? "Error", status, detail, code, ...extra };
}

/** A Response carrying a problem. */
export function problemResponse(p: Problem, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(p), {
    status: p.status,
    headers: { "content-type": "application/problem+json", ...headers },
  });
}

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
    return problemResponse(problem(e.status, e.code, e.message, { ...e.extra, ...ids }), {
      "retry-after": String(RETRY_AFTER_SECONDS),
    });
  }
  if (err instanceof TrickleError) {
    return problemResponse(problem(err.status, err.code, err.message, { ...err.extra, ...ids }));
  }
  if (err instanceof HTTPException) {
    if (err.res !== undefined) return err.res;
    const status = err.status;
    if (status === 415) {
      return problemResponse(
        problem(
          415,
          "UnsupportedMediaType",
          "The request body must be JSON, sent with content-type: application/json",
          ids,
        ),
      );
    }
    const code = status === 400 ? "BadRequest" : status === 401 ? "Unauthorized" : `Http${status}`;
    return problemResponse(problem(status, code, err.message || TITLES[status] || "Error", ids));
  }
  // SQL text, parameters and internal messages never reach a response; the log has the detail.
  log.error("unhandled error", { ...ids, path: c.req.path, error: err, stack: (err as Error)?.stack });
  return problemResponse(problem(500, "InternalError", "An internal error occurred; the log has the detail", ids));
}
