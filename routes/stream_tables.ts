/** /stream-tables: create, list, read, alter, drop, refresh now, history. */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { DatabaseContext } from "../engine/context.ts";
import type { Engine } from "../engine/engine.ts";
import { badRequest } from "../engine/errors.ts";
import { parseQualifiedName } from "../engine/names.ts";
import { planNotes } from "../engine/refresh/differential/differential.ts";
import { alterStreamTable, createStreamTable, dropStreamTable } from "../engine/stream_tables.ts";
import {
  getStreamTableView,
  listStreamTableViews,
  refreshByName,
  streamTableHistory,
  type StreamTableView,
  viewOf,
} from "../engine/stream_tables_read.ts";
import type { AppEnv } from "./env.ts";
import {
  AlterStreamTableSchema,
  CreateStreamTableSchema,
  DatabaseQuery,
  HistoryEntrySchema,
  NameParam,
  problems,
  RefreshResultSchema,
  StreamTableSchema,
} from "./schemas.ts";
import { validationHook } from "./validation.ts";

const tags = ["stream tables"];
const json = <T>(schema: T) => ({ content: { "application/json": { schema } } });

/** The stream table as the API shows it. */
function present(ctx: DatabaseContext, view: StreamTableView): z.infer<typeof StreamTableSchema> {
  const st = view.st;
  return {
    name: `${st.pgt_schema}.${st.pgt_name}`,
    schema: st.pgt_schema,
    table: st.pgt_name,
    database: ctx.name,
    query: st.defining_query,
    refresh_mode: st.refresh_mode,
    effective_refresh_mode: st.effective_refresh_mode,
    fallback_reason: st.fallback_reason,
    plan_notes: planNotes(st.plan),
    schedule: st.schedule,
    freshness_deadline_ms: st.freshness_deadline_ms === null ? null : Number(st.freshness_deadline_ms),
    status: st.status,
    frontier: st.frontier,
    row_count: Number(st.row_count),
    columns: st.plan.columns,
    sources: view.sources,
    last_refresh_at: st.last_refresh_at?.toISOString() ?? null,
    last_full_ms: st.last_full_ms,
    last_diff_ms: st.last_diff_ms,
    consecutive_errors: st.consecutive_errors,
    last_error: st.last_error,
    pending_full_reason: st.pending_full_reason,
    created_at: st.created_at.toISOString(),
    updated_at: st.updated_at.toISOString(),
  };
}

/**
 * The managed database a request works on: `?database=`, or the body's `database`, or the default. Naming two
 * different ones is refused rather than one silently preferred. The choice is kept on the context, so a 503 names it.
 */
export function chooseDatabase(
  engine: Engine,
  c: Context<AppEnv>,
  names: { query?: string | undefined; body?: string | undefined },
): DatabaseContext {
  if (names.query !== undefined && names.body !== undefined && names.query !== names.body) {
    throw badRequest(
      `The body names database "${names.body}" and ?database= names "${names.query}"; name one, or the same in both`,
    );
  }
  const ctx = engine.db(names.body ?? names.query);
  c.set("database", ctx.name);
  return ctx;
}

/** The stream-table routes over `engine`. */
export function streamTableRoutes(engine: Engine): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
  const db = (c: Context<AppEnv>, names: { query?: string | undefined; body?: string | undefined }) =>
    chooseDatabase(engine, c, names);

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "List stream tables",
      request: { query: DatabaseQuery },
      responses: {
        200: { description: "All stream tables of the database", ...json(z.array(StreamTableSchema)) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      return c.json((await listStreamTableViews(ctx)).map((view) => present(ctx, view)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/",
      tags,
      summary: "Create a stream table (validates the query, installs change capture, runs the initial refresh)",
      request: { query: DatabaseQuery, body: { required: true, ...json(CreateStreamTableSchema) } },
      responses: {
        201: { description: "Created and refreshed", ...json(StreamTableSchema) },
        ...problems(400, 401, 403, 404, 409, 413, 422, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const ctx = db(c, { query: c.req.valid("query").database, body: body.database });
      const st = await createStreamTable(ctx, {
        name: parseQualifiedName(body.name),
        query: body.query,
        schedule: body.schedule,
        refreshMode: body.refresh_mode,
        freshnessDeadlineMs: body.freshness_deadline_ms,
      });
      c.header("location", `/stream-tables/${st.pgt_schema}.${st.pgt_name}?database=${encodeURIComponent(ctx.name)}`);
      return c.json(present(ctx, await viewOf(ctx, st)), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{name}",
      tags,
      summary: "One stream table",
      request: { params: NameParam, query: DatabaseQuery },
      responses: {
        200: { description: "The stream table", ...json(StreamTableSchema) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      const name = parseQualifiedName(c.req.valid("param").name);
      return c.json(present(ctx, await getStreamTableView(ctx, name)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "patch",
      path: "/{name}",
      tags,
      summary: "Alter schedule, refresh mode or deadline; suspend (status SUSPENDED) or resume (status ACTIVE)",
      request: { params: NameParam, query: DatabaseQuery, body: { required: true, ...json(AlterStreamTableSchema) } },
      responses: {
        200: { description: "The altered stream table", ...json(StreamTableSchema) },
        ...problems(400, 401, 403, 404, 413, 422, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const ctx = db(c, { query: c.req.valid("query").database, body: body.database });
      const name = parseQualifiedName(c.req.valid("param").name);
      const st = await alterStreamTable(ctx, name, {
        ...(body.schedule === undefined ? {} : { schedule: body.schedule }),
        ...(body.refresh_mode === undefined ? {} : { refreshMode: body.refresh_mode }),
        ...(body.freshness_deadline_ms === undefined ? {} : { freshnessDeadlineMs: body.freshness_deadline_ms }),
        ...(body.status === undefined ? {} : { status: body.status }),
      });
      return c.json(present(ctx, await viewOf(ctx, st)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/{name}",
      tags,
      summary: "Drop a stream table, its storage, and capture on sources nothing else reads",
      request: { params: NameParam, query: DatabaseQuery },
      responses: { 204: { description: "Dropped" }, ...problems(400, 401, 403, 404, 409, 503) },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      await dropStreamTable(ctx, parseQualifiedName(c.req.valid("param").name));
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/{name}/refresh",
      tags,
      summary: "Refresh now (waits for a refresh already running)",
      request: { params: NameParam, query: DatabaseQuery },
      responses: {
        200: { description: "What the refresh did", ...json(RefreshResultSchema) },
        ...problems(400, 401, 403, 404, 422, 503),
      },
    }),
    async (c) => {
      const ctx = db(c, { query: c.req.valid("query").database });
      const r = await refreshByName(ctx, parseQualifiedName(c.req.valid("param").name));
      return c.json({
        action: r.action,
        reason: r.reason,
        rows_inserted: r.rows_inserted,
        rows_deleted: r.rows_deleted,
        delta_rows: r.delta_rows,
        duration_ms: r.duration_ms,
        frontier: r.frontier,
      }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/{name}/history",
      tags,
      summary: "Refresh history, newest first",
      request: {
        params: NameParam,
        query: DatabaseQuery.extend({
          limit: z.coerce.number().int().min(1).max(1000).default(50),
          before: z.coerce.number().int().positive().optional().openapi({
            description: "Page: refresh_id to start below",
          }),
        }),
      },
      responses: {
        200: { description: "Refreshes", ...json(z.array(HistoryEntrySchema)) },
        ...problems(400, 401, 403, 404, 503),
      },
    }),
    async (c) => {
      const q = c.req.valid("query");
      const ctx = db(c, { query: q.database });
      const rows = await streamTableHistory(ctx, {
        name: parseQualifiedName(c.req.valid("param").name),
        limit: q.limit,
        before: q.before,
      });
      return c.json(
        rows.map((r) => ({
          ...r,
          started_at: r.started_at.toISOString(),
          finished_at: r.finished_at.toISOString(),
        })),
        200,
      );
    },
  );

  return app;
}
