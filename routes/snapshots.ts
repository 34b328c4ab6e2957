/** /snapshots and /restore: take, list, read and drop snapshots of stream tables; restore or recreate from one. */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { Engine } from "../engine/engine.ts";
import { parseQualifiedName } from "../engine/names.ts";
import {
  dropSnapshot,
  getSnapshot,
  listSnapshots,
  parseSnapshotName,
  restoreSnapshot,
  type Snapshot,
  takeSnapshot,
} from "../engine/snapshots.ts";
import type { AppEnv } from "./env.ts";
import { DatabaseQuery, problems } from "./schemas.ts";
import { chooseDatabase } from "./stream_tables.ts";
import { validationHook } from "./validation.ts";

const tags = ["snapshots"];
const json = <T>(schema: T) => ({ content: { "application/json": { schema } } });

const SnapshotSchema = z.object({
  snapshot: z.string().openapi({ example: "pgtrickle.snapshot_order_totals_1732550000000" }),
  stream_table: z.string().openapi({ example: "public.order_totals" }),
  database: z.string(),
  created_at: z.string(),
  row_count: z.number().int(),
  frontier: z.string().nullable().openapi({ description: "The MVCC snapshot the rows are exact for" }),
  size_bytes: z.number().int(),
  retention_state: z.enum(["retained", "rows_only"]).openapi({
    description: "retained: the changes since its frontier are kept, a restore continues DIFFERENTIAL; rows_only: " +
      "a restore is followed by a FULL refresh",
  }),
  rows_only_reason: z.string().nullable(),
  pinned_changes: z.number().int().openapi({ description: "Buffered source changes since its frontier it keeps" }),
  content_hash: z.string().openapi({ description: "<rows>:<sum of 64-bit row hashes>, independent of row order" }),
  catalog_schema_version: z.number().int(),
}).openapi("Snapshot");

const CreateSnapshotSchema = z.object({
  stream_table: z.string().openapi({ example: "order_totals" }),
  target: z.string().nullable().optional().openapi({
    description: "schema.table for the snapshot's rows; default pgtrickle.snapshot_<name>_<epoch ms>",
  }),
  database: z.string().optional(),
}).strict().openapi("CreateSnapshot");

const RestoreSchema = z.object({
  stream_table: z.string().openapi({ example: "order_totals", description: "Recreated when it does not exist" }),
  source: z.string().openapi({ example: "pgtrickle.snapshot_order_totals_1732550000000" }),
  verify: z.boolean().default(true).openapi({ description: "Check the content hash before restoring" }),
  database: z.string().optional(),
}).strict().openapi("Restore");

const RestoreResultSchema = z.object({
  stream_table: z.string(),
  snapshot: z.string(),
  recreated: z.boolean(),
  rows_restored: z.number().int(),
  frontier: z.string().nullable(),
  duration_ms: z.number(),
  next_refresh: z.object({ mode: z.enum(["FULL", "DIFFERENTIAL"]), reason: z.string().nullable() }),
  pending_changes: z.number().int().nullable(),
  catch_up_estimate_ms: z.number().nullable(),
}).openapi("RestoreResult");

const SnapshotParam = z.object({
  snapshot: z.string().openapi({ param: { name: "snapshot", in: "path" }, example: "snapshot_order_totals_1" }),
});

function present(database: string, s: Snapshot): z.infer<typeof SnapshotSchema> {
  return {
    snapshot: s.snapshot,
    stream_table: s.stream_table,
    database,
    created_at: s.created_at.toISOString(),
    row_count: Number(s.row_count),
    frontier: s.frontier,
    size_bytes: Number(s.size_bytes),
    retention_state: s.retention_state,
    rows_only_reason: s.rows_only_reason,
    pinned_changes: Number(s.pinned_changes),
    content_hash: s.content_hash,
    catalog_schema_version: s.catalog_schema_version,
  };
}

/** The snapshot routes over `engine`: /snapshots, /snapshots/{snapshot}, /restore. */
export function snapshotRoutes(engine: Engine): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
  const db = (c: Context<AppEnv>, names: { query?: string | undefined; body?: string | undefined }) =>
    chooseDatabase(engine, c, names);

  app.openapi(
    createRoute({
      method: "post",
      path: "/snapshots",
      tags,
      summary: "Snapshot a stream table: its rows, frontier, content hash and metadata, in one transaction",
      request: { query: DatabaseQuery, body: { required: true, ...json(CreateSnapshotSchema) } },
      responses: {
        201: { description: "The snapshot", ...json(SnapshotSchema) },
        ...problems(400, 401, 403, 404, 409, 413, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const ctx = db(c, { query: c.req.valid("query").database, body: body.database });
      const s = await takeSnapshot(ctx, {
        streamTable: parseQualifiedName(body.stream_table),
        target: body.target === undefined || body.target === null
          ? null
          : parseQualifiedName(body.target, "snapshot target"),
      });
      c.header("location", `/snapshots/${s.snapshot}?database=${encodeURIComponent(ctx.name)}`);
      return c.json(present(ctx.name, s), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/snapshots",
      tags,
      summary: "List snapshots, newest first (all, or those of one stream table)",
      request: { query: DatabaseQuery.extend({ stream_table: z.string().optional() }) },
      responses: {
        200: { description: "Snapshots", ...json(z.array(SnapshotSchema)) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const ctx = db(c, { query: q.database });
      const list = await listSnapshots(ctx, q.stream_table === undefined ? null : parseQualifiedName(q.stream_table));
      return c.json(list.map((s) => present(ctx.name, s)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/snapshots/{snapshot}",
      tags,
      summary: "One snapshot (schema.name, or name in schema pgtrickle)",
      request: { params: SnapshotParam, query: DatabaseQuery },
      responses: {
        200: { description: "The snapshot", ...json(SnapshotSchema) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      const s = await getSnapshot(ctx, parseSnapshotName(c.req.valid("param").snapshot));
      return c.json(present(ctx.name, s), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/snapshots/{snapshot}",
      tags,
      summary: "Drop a snapshot: its table, its catalog row and its pin on the change buffers",
      request: { params: SnapshotParam, query: DatabaseQuery },
      responses: { 204: { description: "Dropped" }, ...problems(400, 401, 403, 404, 503) },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      await dropSnapshot(ctx, parseSnapshotName(c.req.valid("param").snapshot));
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/restore",
      tags,
      summary: "Restore a stream table's rows and frontier from a snapshot (recreating it when it does not exist)",
      request: { query: DatabaseQuery, body: { required: true, ...json(RestoreSchema) } },
      responses: {
        200: { description: "What was restored and what the next refresh will be", ...json(RestoreResultSchema) },
        ...problems(400, 401, 403, 404, 409, 413, 422, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const ctx = db(c, { query: c.req.valid("query").database, body: body.database });
      const r = await restoreSnapshot(ctx, {
        streamTable: parseQualifiedName(body.stream_table),
        source: parseSnapshotName(body.source, "snapshot source"),
        verify: body.verify,
      });
      return c.json(r, 200);
    },
  );

  return app;
}
