/** Request and response schemas shared by the routes (zod, with OpenAPI metadata). */
import { z } from "@hono/zod-openapi";

const ProblemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  code: z.string().openapi({ example: "StreamTableNotFound" }),
}).passthrough().openapi("Problem");

/** Error responses every route may give, as problem+json. */
export function problems(...statuses: number[]) {
  const out: Record<
    number,
    { description: string; content: { "application/problem+json": { schema: typeof ProblemSchema } } }
  > = {};
  const text: Record<number, string> = {
    400: "Malformed request, unknown field, invalid or reserved name, invalid schedule, two databases named",
    401: "No bearer token",
    403: "Wrong bearer token",
    404: "No such stream table or database",
    409: "Conflict (already exists, has dependents, refresh in progress)",
    413: "Body over the size limit",
    422: "The query is invalid or unsupported in the requested mode",
    503: "Timed out (Timeout), or the database is unavailable (DatabaseUnavailable, with Retry-After)",
  };
  for (const s of statuses) {
    out[s] = { description: text[s] ?? "Error", content: { "application/problem+json": { schema: ProblemSchema } } };
  }
  return out;
}

export const DatabaseQuery = z.object({
  database: z.string().optional().openapi({ description: "Managed database; the first configured when omitted" }),
});

export const NameParam = z.object({
  name: z.string().openapi({ param: { name: "name", in: "path" }, example: "public.order_totals" }),
});

const RefreshModeSchema = z.enum(["AUTO", "FULL", "DIFFERENTIAL", "IMMEDIATE"]);

export const StreamTableSchema = z.object({
  name: z.string().openapi({ example: "public.order_totals" }),
  schema: z.string(),
  table: z.string(),
  database: z.string(),
  query: z.string(),
  refresh_mode: RefreshModeSchema,
  effective_refresh_mode: z.enum(["FULL", "DIFFERENTIAL"]),
  fallback_reason: z.string().nullable(),
  plan_notes: z.array(z.string()).openapi({
    description: "Where the differential plan degrades, e.g. a whole-table window recomputed on every change",
  }),
  schedule: z.string(),
  freshness_deadline_ms: z.number().int().nullable(),
  status: z.enum(["INITIALIZING", "ACTIVE", "SUSPENDED", "ERROR"]),
  frontier: z.string().nullable().openapi({ description: "The MVCC snapshot the content is exact for" }),
  row_count: z.number().int(),
  columns: z.array(z.object({ name: z.string(), type: z.string() })),
  sources: z.array(z.string()),
  last_refresh_at: z.string().nullable(),
  last_full_ms: z.number().nullable(),
  last_diff_ms: z.number().nullable(),
  consecutive_errors: z.number().int(),
  last_error: z.string().nullable(),
  pending_full_reason: z.string().nullable().openapi({
    description: "Why the next refresh will be FULL: a restore from a snapshot whose changes were not retained",
  }),
  created_at: z.string(),
  updated_at: z.string(),
}).openapi("StreamTable");

export const CreateStreamTableSchema = z.object({
  // Not min(1): an empty name is refused by parseQualifiedName as InvalidName, like every other bad name.
  name: z.string().openapi({ example: "order_totals", description: "table or schema.table" }),
  query: z.string().min(1).max(100_000).openapi({
    example: "SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id",
  }),
  schedule: z.string().min(1).max(200).default("1m").openapi({ description: "30s, 5m, 1h30m, 1d or a 5/6-field cron" }),
  refresh_mode: RefreshModeSchema.default("AUTO"),
  freshness_deadline_ms: z.number().int().positive().nullable().default(null),
  database: z.string().optional(),
}).strict().openapi("CreateStreamTable");

export const AlterStreamTableSchema = z.object({
  schedule: z.string().min(1).max(200).optional(),
  refresh_mode: RefreshModeSchema.optional(),
  freshness_deadline_ms: z.number().int().positive().nullable().optional(),
  status: z.enum(["ACTIVE", "SUSPENDED"]).optional().openapi({
    description: "SUSPENDED stops scheduled refreshes; ACTIVE resumes and clears an ERROR",
  }),
  database: z.string().optional(),
}).strict().openapi("AlterStreamTable");

export const RefreshResultSchema = z.object({
  action: z.enum(["FULL", "DIFFERENTIAL", "NO_DATA"]),
  reason: z.string().nullable(),
  rows_inserted: z.number().int(),
  rows_deleted: z.number().int(),
  delta_rows: z.number().int(),
  duration_ms: z.number(),
  frontier: z.string(),
}).openapi("RefreshResult");

export const HistoryEntrySchema = z.object({
  refresh_id: z.number().int(),
  started_at: z.string(),
  finished_at: z.string(),
  duration_ms: z.number(),
  action: z.enum(["FULL", "DIFFERENTIAL", "NO_DATA"]),
  status: z.enum(["SUCCESS", "FAILED"]),
  rows_inserted: z.number().int(),
  rows_deleted: z.number().int(),
  delta_rows: z.number().int(),
  initiated_by: z.string(),
  reason: z.string().nullable(),
  error: z.string().nullable(),
  instance: z.string().openapi({ description: "The service instance that ran it (trickle:<pid>)" }),
}).openapi("RefreshHistoryEntry");
