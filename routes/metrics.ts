/** GET /metrics: OpenMetrics 1.0 when the Accept header allows it, else Prometheus text 0.0.4. */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { exposeMetrics } from "../engine/metrics/metrics.ts";
import type { Logger } from "../log.ts";
import type { AppEnv } from "./env.ts";

/** The metrics endpoint; `selfCheck` validates every body before it is served. */
export function metricsRoutes(engine: Engine, options: { selfCheck: boolean; log: Logger }): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>();
  app.openapi(
    createRoute({
      method: "get",
      path: "/metrics",
      tags: ["operations"],
      summary: "Metrics for Prometheus: OpenMetrics 1.0 or text 0.0.4, by the Accept header",
      responses: {
        200: {
          description: "The exposition (docs/integrations/prometheus.md lists every metric)",
          content: {
            "application/openmetrics-text; version=1.0.0; charset=utf-8": { schema: z.string() },
            "text/plain; version=0.0.4; charset=utf-8": { schema: z.string() },
          },
        },
      },
    }),
    async (c) => {
      const m = await exposeMetrics(engine, {
        accept: c.req.header("accept"),
        selfCheck: options.selfCheck,
        log: options.log,
      });
      return c.body(m.body, 200, { "content-type": m.contentType, vary: "Accept" });
    },
  );
  return app;
}
