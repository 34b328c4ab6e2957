/** /health (liveness) and /ready (every database reachable, schema current). */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { VERSION } from "../version.ts";

const tags = ["operations"];

/** Liveness and readiness probes. */
export function healthRoutes(engine: Engine, state: { shuttingDown: () => boolean }): OpenAPIHono {
  const app = new OpenAPIHono();
  app.openapi(
    createRoute({
      method: "get",
      path: "/health",
      tags,
      summary: "Liveness: the process answers",
      responses: {
        200: {
          description: "Alive",
          content: { "application/json": { schema: z.object({ status: z.literal("ok"), version: z.string() }) } },
        },
      },
    }),
    (c) => c.json({ status: "ok" as const, version: VERSION }, 200),
  );
  const Ready = z.object({
    ready: z.boolean(),
    databases: z.array(z.object({ name: z.string(), ok: z.boolean(), detail: z.string() })),
  });
  app.openapi(
    createRoute({
      method: "get",
      path: "/ready",
      tags,
      summary: "Readiness: every managed database reachable with the schema this version expects",
      responses: {
        200: { description: "Ready", content: { "application/json": { schema: Ready } } },
        503: { description: "Not ready", content: { "application/json": { schema: Ready } } },
      },
    }),
    async (c) => {
      if (state.shuttingDown()) return c.json({ ready: false, databases: [] }, 503);
      const r = await engine.readiness();
      return r.ready ? c.json(r, 200) : c.json(r, 503);
    },
  );
  return app;
}
