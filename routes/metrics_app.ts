/**
 * The app of the optional metrics listener (`metricsPort`): what Prometheus and Grafana call, apart from the API.
 * /health, /metrics and /grafana, behind the read token, each request limited to
 * `metricsRequestTimeoutMs`. With no metrics port, the main app serves the same routes.
 */
import { Hono } from "hono";
import type { Engine } from "../engine/engine.ts";
import type { Logger } from "../log.ts";
import { type AppEnv, requestIds } from "./env.ts";
import { grafanaRoutes, isGrafanaPath } from "./grafana.ts";
import { healthRoutes } from "./health.ts";
import { metricsRoutes } from "./metrics.ts";
import { useCommonMiddleware } from "./middleware.ts";
import { errorToResponse, problem, problemResponse } from "./problem.ts";

interface MetricsAppDeps {
  engine: Engine;
  log: Logger;
  adminToken: string | null;
  readToken: string | null;
  bodyLimitBytes: number;
  metricsRequestTimeoutMs: number;
  /** Validate every /metrics body before serving it (setting metricsSelfCheck). */
  metricsSelfCheck: boolean;
  shuttingDown?: () => boolean;
}

/** Builds the metrics listener's app. */
export function createMetricsApp(deps: MetricsAppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  useCommonMiddleware(app, {
    log: deps.log,
    adminToken: deps.adminToken,
    readToken: deps.readToken,
    readPaths: isGrafanaPath,
    timeoutMs: deps.metricsRequestTimeoutMs,
    bodyLimitBytes: deps.bodyLimitBytes,
  });
  app.route("/", healthRoutes(deps.engine, { shuttingDown: deps.shuttingDown ?? (() => false) }));
  app.route("/grafana", grafanaRoutes(deps.engine, deps.log));
  app.route("/", metricsRoutes(deps.engine, { selfCheck: deps.metricsSelfCheck, log: deps.log }));
  app.notFound((c) =>
    problemResponse(
      problem("NotFound", `No route for ${c.req.method} ${c.req.path} on the metrics listener`, requestIds(c)),
    )
  );
  app.onError((err, c) => errorToResponse(err, c, deps.log));
  return app;
}
