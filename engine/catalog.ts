/** Reads of the catalog: stream tables as the API shows them, their dependencies and refresh history. */
import type { Sql, Tx } from "../db/pool.ts";
import type { QualifiedName } from "../db/identifiers.ts";
import type { QueryPlan } from "./plan.ts";

export type RefreshMode = "AUTO" | "FULL" | "DIFFERENTIAL" | "IMMEDIATE";
export type Status = "INITIALIZING" | "ACTIVE" | "SUSPENDED" | "ERROR";

export interface StreamTableRow {
  pgt_id: number;
  pgt_relid: number;
  pgt_schema: string;
  pgt_name: string;
  defining_query: string;
  refresh_mode: RefreshMode;
  effective_refresh_mode: "FULL" | "DIFFERENTIAL";
  fallback_reason: string | null;
  schedule: string;
  freshness_deadline_ms: number | null;
  status: Status;
  plan: QueryPlan;
  frontier: string | null;
  row_count: number;
  last_refresh_at: Date | null;
  last_full_ms: number | null;
  last_diff_ms: number | null;
  consecutive_errors: number;
  last_error: string | null;
  /** Why the next refresh must be FULL (set by a restore whose changes are not retained). */
  pending_full_reason: string | null;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = (sql: Sql | Tx) =>
  sql`pgt_id, pgt_relid::int8 AS pgt_relid, pgt_schema, pgt_name, defining_query, refresh_mode,
    effective_refresh_mode, fallback_reason, schedule, freshness_deadline_ms, status, plan, frontier::text AS frontier,
    row_count, last_refresh_at, last_full_ms, last_diff_ms, consecutive_errors, last_error, pending_full_reason, created_at,
    updated_at`;

/** All stream tables of the database, by name. */
export async function listStreamTables(sql: Sql | Tx): Promise<StreamTableRow[]> {
  return [
    ...await sql<StreamTableRow[]>`
    SELECT ${COLUMNS(sql)} FROM pgtrickle.pgt_stream_tables ORDER BY pgt_schema, pgt_name`,
  ];
}

/** One stream table by name, or undefined. */
export async function findStreamTable(sql: Sql | Tx, name: QualifiedName): Promise<StreamTableRow | undefined> {
  const [row] = await sql<StreamTableRow[]>`
    SELECT ${
    COLUMNS(sql)
  } FROM pgtrickle.pgt_stream_tables WHERE pgt_schema = ${name.schema} AND pgt_name = ${name.name}`;
  return row;
}

/** One stream table by id, locked for the transaction; `nowait` fails at once when another holds it. */
export async function lockStreamTable(
  tx: Tx,
  pgtId: number,
  options: { nowait?: boolean } = {},
): Promise<StreamTableRow | undefined> {
  const [row] = options.nowait
    ? await tx<StreamTableRow[]>`
      SELECT ${COLUMNS(tx)} FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${pgtId} FOR UPDATE NOWAIT`
    : await tx<StreamTableRow[]>`
      SELECT ${COLUMNS(tx)} FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${pgtId} FOR UPDATE`;
  return row;
}

export interface Dependency {
  pgt_id: number;
  source_relid: number;
  source_schema: string;
  source_name: string;
  source_pgt_id: number | null;
}

/** Stream table -> source edges: all, those of one stream table (`of`), or those whose source is one (`readersOf`). */
export async function listDependencies(
  sql: Sql | Tx,
  filter: { of?: number; readersOf?: number } = {},
): Promise<Dependency[]> {
  return [
    ...await sql<Dependency[]>`
    SELECT pgt_id, source_relid::int8 AS source_relid, source_schema, source_name, source_pgt_id
    FROM pgtrickle.pgt_dependencies
    WHERE (${filter.of ?? null}::int8 IS NULL OR pgt_id = ${filter.of ?? null})
      AND (${filter.readersOf ?? null}::int8 IS NULL OR source_pgt_id = ${filter.readersOf ?? null})
    ORDER BY pgt_id, source_schema, source_name`,
  ];
}

export interface HistoryRow {
  refresh_id: number;
  started_at: Date;
  finished_at: Date;
  duration_ms: number;
  action: "FULL" | "DIFFERENTIAL" | "NO_DATA";
  status: "SUCCESS" | "FAILED";
  rows_inserted: number;
  rows_deleted: number;
  delta_rows: number;
  initiated_by: string;
  reason: string | null;
  error: string | null;
  instance: string;
}

/** The newest refreshes of a stream table, newest first. */
export async function refreshHistory(
  sql: Sql | Tx,
  pgtId: number,
  options: { limit: number; before?: number },
): Promise<HistoryRow[]> {
  return [
    ...await sql<HistoryRow[]>`
    SELECT refresh_id, started_at, finished_at, duration_ms, action, status, rows_inserted, rows_deleted, delta_rows,
      initiated_by, reason, error, instance
    FROM pgtrickle.pgt_refresh_history
    WHERE pgt_id = ${pgtId} ${options.before === undefined ? sql`` : sql`AND refresh_id < ${options.before}`}
    ORDER BY refresh_id DESC LIMIT ${options.limit}`,
  ];
}
