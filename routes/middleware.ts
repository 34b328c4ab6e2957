/** The HTTP edge: bearer tokens, request timeouts, access logs. */
import type { Hono, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { requestId } from "hono/request-id";
import { HTTPException } from "hono/http-exception";
import { timeout } from "hono/timeout";
import { timingSafeEqual } from "hono/utils/buffer";
import type { Logger } from "../log.ts";
import { type AppEnv, requestIds } from "./env.ts";
import { problem, problemResponse } from "./problem.ts";

interface AuthSettings {
  adminToken: string | null;
  readToken: string | null;
}

const READ_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
/** Always open: liveness and readiness probes carry no data. */
const OPEN_PATHS = new Set(["/health", "/ready", "/docs", "/openapi.json"]);

/**
 * Always open: the API's description and the Swagger UI files (they hold no data). A browser cannot send a bearer
 * token for a page and its assets, so /docs would be unusable with a read token; "Try it out" takes the token
 * through Swagger UI's Authorize button.
 */
function isOpenPath(path: string): boolean {
  return OPEN_PATHS.has(path) || path.startsWith("/docs/");
}

/**
 * Writes need the admin token; reads need the read token or the admin token (open when no read token is set).
 * With no admin token at all, everything is open and the server only listens on loopback (main.ts).
 * Not hono's bearerAuth: it answers a wrong token 401 and a non-Bearer header 400, where the API answers 403 (and
 * tells the read token from a wrong one) and 401.
 */
export function auth(
  settings: AuthSettings,
  options: { readPaths?: (path: string) => boolean } = {},
): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    if (settings.adminToken === null || isOpenPath(c.req.path)) return next();
    const isRead = READ_METHODS.has(c.req.method) || (options.readPaths?.(c.req.path) ?? false);
    if (isRead && settings.readToken === null) return next();
    const header = c.req.header("authorization");
    const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match === null) {
      return problemResponse(
        problem(
          "Unauthorized",
          "This request needs a bearer token: Authorization: Bearer <token>",
          requestIds(c),
        ),
        { "www-authenticate": 'Bearer realm="trickle"' },
      );
    }
    const token = match[1]!;
    const isAdmin = await timingSafeEqual(token, settings.adminToken);
    const isReader = settings.readToken !== null && await timingSafeEqual(token, settings.readToken);
    if (isAdmin || (isRead && isReader)) return next();
    const detail = isReader
      ? "The read token does not allow changes; use the admin token"
      : "The bearer token is not valid for this service";
    return problemResponse(problem("Forbidden", detail, requestIds(c)));
  };
}

/** Answers 503 Timeout when a handler runs past `ms` (the work it started may still finish). */
export function requestTimeout(ms: number): MiddlewareHandler<AppEnv> {
  return timeout(ms, (c) =>
    new HTTPException(503, {
      res: problemResponse(
        problem("Timeout", `The request did not finish within ${ms} ms`, requestIds(c)),
      ),
    }));
}

/** One log line per request, with its id, status and duration (never headers or bodies); the id on every answer. */
export function accessLog(log: Logger): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const t0 = performance.now();
    await next();
    // Answers built as plain Responses (problems) lose the header hono's requestId middleware set on the context.
    const id = c.get("requestId");
    if (id !== undefined && !c.res.headers.has("x-request-id")) c.res.headers.set("x-request-id", id);
    log.info("request", {
      request_id: id,
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      ms: Math.round((performance.now() - t0) * 10) / 10,
    });
  };
}

/**
 * What every listener's app runs first, in order: a request id, the access log, the tokens (with `/grafana`'s POSTs
 * as reads), the time limit, the body size limit.
 */
export function useCommonMiddleware(
  app: Hono<AppEnv>,
  deps: {
    log: Logger;
    adminToken: string | null;
    readToken: string | null;
    readPaths: (path: string) => boolean;
    timeoutMs: number;
    bodyLimitBytes: number;
  },
): void {
  app.use("*", requestId());
  app.use("*", accessLog(deps.log));
  app.use("*", auth({ adminToken: deps.adminToken, readToken: deps.readToken }, { readPaths: deps.readPaths }));
  app.use("*", requestTimeout(deps.timeoutMs));
  app.use(
    "*",
    bodyLimit({
      maxSize: deps.bodyLimitBytes,
      onError: (c) =>
        problemResponse(
          problem("PayloadTooLarge", `The request body is larger than ${deps.bodyLimitBytes} bytes`, requestIds(c)),
        ),
    }),
  );
}
