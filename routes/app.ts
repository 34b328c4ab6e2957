/** createApp(deps): the whole HTTP API as a Hono app, without listening (main.ts serves it, tests call it). */
import { OpenAPIHono } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import type { Logger } from "../log.ts";
import { VERSION } from "../version.ts";
import { docsRoutes } from "./docs.ts";
import { grafanaRoutes, isGrafanaPath } from "./grafana.ts";
import { healthRoutes } from "./health.ts";
import { metricsRoutes } from "./metrics.ts";
import { requestTimeout, useCommonMiddleware } from "./middleware.ts";
import { type AppEnv, requestIds } from "./env.ts";
import { errorToResponse, problem, problemResponse } from "./problem.ts";
import { streamTableRoutes } from "./stream_tables.ts";
import { recommendationRoutes } from "./recommendations.ts";
import { alertRoutes } from "./alerts.ts";
import { clusterRoutes } from "./cluster.ts";
import { snapshotRoutes } from "./snapshots.ts";

interface AppDeps {
  engine: Engine;
  log: Logger;
  adminToken: string | null;
  readToken: string | null;
  bodyLimitBytes: number;
  requestTimeoutMs: number;
  /** The time limit of /grafana (and /metrics) requests; default 5000. */
  metricsRequestTimeoutMs?: number;
  /** Validate every /metrics body before serving it (setting metricsSelfCheck; off unless set). */
  metricsSelfCheck?: boolean;
  /** True once shutdown has begun (readiness answers 503). */
  shuttingDown?: () => boolean;
}

/** Builds the API. */
export function createApp(deps: AppDeps): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>();
  useCommonMiddleware(app, {
    log: deps.log,
    adminToken: deps.adminToken,
    readToken: deps.readToken,
    readPaths: isGrafanaPath,
    timeoutMs: deps.requestTimeoutMs,
    bodyLimitBytes: deps.bodyLimitBytes,
  });
  app.use("/grafana/*", requestTimeout(deps.metricsRequestTimeoutMs ?? 5000));
  app.use("/metrics", requestTimeout(deps.metricsRequestTimeoutMs ?? 5000));
  app.route("/", healthRoutes(deps.engine, { shuttingDown: deps.shuttingDown ?? (() => false) }));
  app.route("/stream-tables", streamTableRoutes(deps.engine));
  app.route("/recommendations", recommendationRoutes(deps.engine));
  app.route("/alerts", alertRoutes(deps.engine));
  app.route("/grafana", grafanaRoutes(deps.engine, deps.log));
  app.route("/cluster", clusterRoutes(deps.engine));
  app.route("/", snapshotRoutes(deps.engine));
  app.route("/", docsRoutes());
  app.route("/", metricsRoutes(deps.engine, { selfCheck: deps.metricsSelfCheck ?? false, log: deps.log }));
  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "trickle",
      version: VERSION,
      description: "Stream tables for PostgreSQL, kept fresh by a service. Errors are application/problem+json " +
        "with a stable `code` (see the README).",
    },
    security: deps.adminToken === null ? [] : [{ bearer: [] }],
  });
  // A known path asked with another method is 405 with the methods it has; anything else is 404.
  const known = app.routes
    .filter((r) => r.method !== "ALL")
    .map((r) => ({
      method: r.method,
      pattern: new RegExp(`^${r.path.replaceAll(".", "\\.").replace(/:[^/]+/g, "[^/]+")}$`),
    }));
  app.notFound((c) => {
    const allowed = [...new Set(known.filter((r) => r.pattern.test(c.req.path)).map((r) => r.method))];
    const ids = requestIds(c);
    if (allowed.length > 0) {
      return problemResponse(
        problem(
          "MethodNotAllowed",
          `${c.req.method} is not allowed on ${c.req.path}; allowed: ${allowed.join(", ")}`,
          ids,
        ),
        { allow: allowed.join(", ") },
      );
    }
    return problemResponse(problem("NotFound", `No route for ${c.req.method} ${c.req.path}`, ids));
  });
  app.onError((err, c) => errorToResponse(err, c, deps.log));
  return app;
}
