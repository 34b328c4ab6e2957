/** /cluster: the worker summary and the metrics summary (engine/cluster.ts; the SQL functions give the same numbers). */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import { clusterSummary, clusterWorkerSummary } from "../engine/cluster.ts";
import type { Engine } from "../engine/engine.ts";
import type { AppEnv } from "./env.ts";
import { problems } from "./schemas.ts";
import { validationHook } from "./validation.ts";

const tags = ["cluster"];
const json = <T>(schema: T) => ({ content: { "application/json": { schema } } });

const DatabaseFilter = z.object({
  database: z.string().optional().openapi({ description: "Only this database (404 when the cluster has no such one)" }),
});

const DatabaseWorkersSchema = z.object({
  db_oid: z.number().int(),
  db_name: z.string(),
  workers_active: z.number().int().openapi({ description: "Refreshes running now, from any instance" }),
  workers_queued: z.number().int().openapi({ description: "Refresh jobs waiting for a worker" }),
  quota: z.number().int().openapi({ description: "per_database_quota, or ceil(max_workers / databases)" }),
  quota_utilization_pct: z.number(),
  oldest_queued_wait_ms: z.number().int().nullable(),
  leader: z.string().nullable().openapi({ description: "The instance leading it, trickle:<pid>" }),
}).openapi("DatabaseWorkers");

const ClusterWorkersSchema = z.object({
  databases: z.array(DatabaseWorkersSchema),
  workers_active: z.number().int(),
  workers_queued: z.number().int(),
  max_workers: z.number().int(),
  quota: z.number().int().nullable(),
  utilization_pct: z.number().nullable().openapi({ description: "workers_active / max_workers, in percent" }),
  instances: z.array(z.object({ instance: z.string(), max_workers: z.number().int(), per_database_quota: z.number() })),
  leaders: z.array(z.object({ db_oid: z.number().int(), db_name: z.string(), instance: z.string() })),
}).openapi("ClusterWorkers");

const counts = {
  stream_tables: z.number().int(),
  active: z.number().int(),
  initializing: z.number().int(),
  suspended: z.number().int(),
  error: z.number().int(),
  refreshes_total: z.number().int().openapi({ description: "Refreshes in the retained history (since history_since)" }),
  refreshes_failed_total: z.number().int(),
  refreshes_last_hour: z.number().int(),
  refreshes_failed_last_hour: z.number().int(),
  rows_processed_total: z.number().int().openapi({ description: "Rows inserted + deleted by successful refreshes" }),
  rows_processed_last_hour: z.number().int(),
  history_since: z.string().nullable(),
  workers_active: z.number().int(),
  workers_queued: z.number().int(),
  stalest_lag_ms: z.number().int().nullable().openapi({ description: "Time since the stalest one's last refresh" }),
};

const DatabaseSummarySchema = z.object({
  db_oid: z.number().int(),
  db_name: z.string(),
  ...counts,
  quota: z.number().int().nullable(),
  quota_utilization_pct: z.number().nullable(),
  stalest_stream_table: z.string().nullable(),
}).openapi("DatabaseSummary");

const ClusterSummarySchema = z.object({
  databases: z.array(DatabaseSummarySchema),
  cluster: z.object({
    databases: z.number().int(),
    ...counts,
    max_workers: z.number().int().nullable(),
    utilization_pct: z.number().nullable(),
    stalest_stream_table: z.object({ db_name: z.string(), name: z.string(), lag_ms: z.number().int() }).nullable(),
  }),
}).openapi("ClusterSummary");

/** The cluster routes over `engine`. */
export function clusterRoutes(engine: Engine): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });

  app.openapi(
    createRoute({
      method: "get",
      path: "/workers",
      tags,
      summary: "Workers per database of the cluster: active, queued, quota, oldest wait, leader; the cluster totals",
      request: { query: DatabaseFilter },
      responses: {
        200: { description: "The same from every instance", ...json(ClusterWorkersSchema) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => c.json(await clusterWorkerSummary(engine, c.req.valid("query").database), 200),
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/summary",
      tags,
      summary: "Per managed database and summed: stream tables by status, refreshes, failures, rows, workers, stalest",
      request: { query: DatabaseFilter },
      responses: {
        200: { description: "The summary", ...json(ClusterSummarySchema) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const database = c.req.valid("query").database;
      if (database !== undefined) c.set("database", database);
      return c.json(await clusterSummary(engine, database), 200);
    },
  );

  return app;
}
