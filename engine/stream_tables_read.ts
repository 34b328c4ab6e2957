/**
 * Lookups of stream tables by name for the API: one, all, their sources, their refresh history, and a refresh asked
 * for by name. Every route that needs "the stream table named X, or 404" comes here.
 */
import { isQueryError } from "../db/errors.ts";
import { displayName, type QualifiedName } from "../db/identifiers.ts";
import {
  type Dependency,
  findStreamTable,
  type HistoryRow,
  listDependencies,
  listStreamTables,
  refreshHistory,
  type StreamTableRow,
} from "./catalog.ts";
import type { DatabaseContext } from "./context.ts";
import { refreshFailed, streamTableNotFound, TrickleError } from "./errors.ts";
import { type RefreshResult, refreshStreamTable } from "./refresh/refresh.ts";

/** A stream table with the names of the relations it reads (schema-qualified unless in public). */
export interface StreamTableView {
  st: StreamTableRow;
  sources: string[];
}

/** Stream table `name`; 404 StreamTableNotFound naming it as the caller did. */
async function getStreamTable(ctx: DatabaseContext, name: QualifiedName): Promise<StreamTableRow> {
  const st = await findStreamTable(ctx.sql, name);
  if (st === undefined) throw streamTableNotFound(displayName(name), ctx.name);
  return st;
}

/** Stream table `name` with its sources; 404 when there is none. */
export async function getStreamTableView(ctx: DatabaseContext, name: QualifiedName): Promise<StreamTableView> {
  return await viewOf(ctx, await getStreamTable(ctx, name));
}

/** A stream table just read or written, with its sources. */
export async function viewOf(ctx: DatabaseContext, st: StreamTableRow): Promise<StreamTableView> {
  return { st, sources: sourceNames(await listDependencies(ctx.sql, { of: st.pgt_id })) };
}

/** Every stream table of the database with its sources, by name (two queries, not one per stream table). */
export async function listStreamTableViews(ctx: DatabaseContext): Promise<StreamTableView[]> {
  const [rows, deps] = await Promise.all([listStreamTables(ctx.sql), listDependencies(ctx.sql)]);
  return rows.map((st) => ({ st, sources: sourceNames(deps.filter((d) => d.pgt_id === st.pgt_id)) }));
}

/** The refresh history of stream table `name`, newest first; 404 when there is none. */
export async function streamTableHistory(
  ctx: DatabaseContext,
  options: { name: QualifiedName; limit: number; before?: number | undefined },
): Promise<HistoryRow[]> {
  const st = await getStreamTable(ctx, options.name);
  return await refreshHistory(ctx.sql, st.pgt_id, {
    limit: options.limit,
    ...(options.before === undefined ? {} : { before: options.before }),
  });
}

/**
 * Refreshes stream table `name` now (waiting for a refresh already running). A query failing on the current data
 * (division by zero, a bad cast...) is the user's to fix: 422 RefreshFailed, not a 500.
 */
export async function refreshByName(ctx: DatabaseContext, name: QualifiedName): Promise<RefreshResult> {
  const st = await getStreamTable(ctx, name);
  try {
    return await refreshStreamTable(ctx, st.pgt_id, { initiatedBy: "MANUAL" });
  } catch (e) {
    // Dropped by another request since it was found: named as the caller named it, not by its id.
    if (e instanceof TrickleError && e.code === "StreamTableNotFound") {
      throw streamTableNotFound(displayName(name), ctx.name);
    }
    throw isQueryError(e) ? refreshFailed(e.message, e.code) : e;
  }
}

function sourceNames(deps: Dependency[]): string[] {
  return deps.map((d) => displayName({ schema: d.source_schema, name: d.source_name }));
}
