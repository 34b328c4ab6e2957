/** /recommendations: the schedule planner's recommendations (all, one) and applying one (admin). */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Engine } from "../engine/engine.ts";
import { parseQualifiedName } from "../engine/names.ts";
import { applyRecommendation, getRecommendation, listRecommendations } from "../engine/planner/read.ts";
import type { AppEnv } from "./env.ts";
import { DatabaseQuery, NameParam, problems } from "./schemas.ts";
import { validationHook } from "./validation.ts";

const tags = ["recommendations"];
const json = <T>(schema: T) => ({ content: { "application/json": { schema } } });

const ReasonSchema = z.object({
  rule: z.string(),
  event: z.string(),
  detail: z.string(),
  facts: z.record(z.string(), z.unknown()),
}).openapi("Reason");

const RecommendationSchema = z.object({
  stream_table: z.string(),
  recommended_interval_seconds: z.number().nullable(),
  recommended_schedule: z.string().nullable().optional(),
  peak_window_cron: z.string().nullable(),
  peak_window_reason: z.string().nullable().optional(),
  confidence: z.number().min(0).max(1),
  current_interval_seconds: z.number().nullable(),
  delta_pct: z.number().nullable(),
  conflicts: z.array(z.string()).optional(),
  reasoning: z.array(ReasonSchema),
  computed_at: z.string().nullable(),
  pass_at: z.string().nullable(),
}).openapi("Recommendation");

const RecommendationRowSchema = z.object({
  stream_table: z.string(),
  current_interval_seconds: z.number().nullable(),
  recommended_interval_seconds: z.number().nullable(),
  delta_pct: z.number().nullable(),
  confidence: z.number(),
  peak_window_cron: z.string().nullable(),
  reasoning: z.array(ReasonSchema),
  computed_at: z.string().nullable(),
}).openapi("RecommendationRow");

/** The recommendation routes over `engine`. */
export function recommendationRoutes(engine: Engine): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
  const db = (c: { set: (k: "database", v: string) => void }, name: string | undefined) => {
    const ctx = engine.db(name);
    c.set("database", ctx.name);
    return ctx;
  };

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "Every stream table's recommendation (largest delta_pct first by default)",
      request: {
        query: DatabaseQuery.extend({
          sort: z.enum(["delta_pct", "confidence", "name"]).default("delta_pct").openapi({
            description: "delta_pct and confidence sort descending, name ascending",
          }),
        }),
      },
      responses: {
        200: { description: "One row per stream table", ...json(z.array(RecommendationRowSchema)) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const rows = await listRecommendations(db(c, q.database), { sort: q.sort });
      return c.json(rows.map((r) => ({ ...r, computed_at: r.computed_at?.toISOString() ?? null })), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{name}",
      tags,
      summary: "One stream table's recommendation (what pgtrickle.recommend_schedule(name) returns)",
      request: { params: NameParam, query: DatabaseQuery },
      responses: {
        200: { description: "The recommendation of the last planner pass", ...json(RecommendationSchema) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, c.req.valid("query").database);
      return c.json(await getRecommendation(ctx, parseQualifiedName(c.req.valid("param").name)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/{name}/apply",
      tags,
      summary: "Set the stream table's schedule to the recommended interval (admin)",
      request: { params: NameParam, query: DatabaseQuery },
      responses: {
        200: {
          description: "The schedule set",
          ...json(z.object({
            stream_table: z.string(),
            previous_schedule: z.string(),
            schedule: z.string(),
            recommendation: RecommendationSchema,
          })),
        },
        ...problems(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, c.req.valid("query").database);
      const r = await applyRecommendation(ctx, parseQualifiedName(c.req.valid("param").name));
      return c.json({
        stream_table: `${r.st.pgt_schema}.${r.st.pgt_name}`,
        previous_schedule: r.previous_schedule,
        schedule: r.st.schedule,
        recommendation: r.recommendation,
      }, 200);
    },
  );

  return app;
}
