/** /alerts: recent alerts, newest first, with each delivery's state (webhook secrets are never part of it). */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { listAlerts } from "../engine/alerts/outbox.ts";
import type { AppEnv } from "./env.ts";
import { DatabaseQuery, problems } from "./schemas.ts";
import { validationHook } from "./validation.ts";

const DeliverySchema = z.object({
  sink: z.string().openapi({ example: "webhook" }),
  target: z.string().openapi({ description: "The sink's URL without credentials, query or fragment" }),
  state: z.enum(["pending", "delivered", "dead"]),
  attempts: z.number().int(),
  next_attempt_at: z.string().nullable(),
  last_attempt_at: z.string().nullable(),
  last_status: z.number().int().nullable(),
  last_error: z.string().nullable(),
  delivered_at: z.string().nullable(),
}).openapi("AlertDelivery");

const AlertSchema = z.object({
  alert_id: z.number().int(),
  webhook_id: z.string(),
  stream_table: z.string(),
  kind: z.string().openapi({ example: "predicted_sla_breach" }),
  state: z.enum(["firing", "resolved"]),
  severity: z.string(),
  payload: z.record(z.string(), z.unknown()),
  created_at: z.string(),
  deliveries: z.array(DeliverySchema),
}).openapi("Alert");

/** The alert routes over `engine`. */
export function alertRoutes(engine: Engine): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags: ["alerts"],
      summary: "Recent alerts, newest first, and their deliveries",
      request: { query: DatabaseQuery.extend({ limit: z.coerce.number().int().min(1).max(1000).default(100) }) },
      responses: {
        200: { description: "Alerts", content: { "application/json": { schema: z.array(AlertSchema) } } },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const ctx = engine.db(q.database);
      c.set("database", ctx.name);
      return c.json(await listAlerts(ctx.sql, { limit: q.limit }), 200);
    },
  );
  return app;
}
