/**
 * What the routes read of the planner: the recommendations its last pass stored, through the same SQL functions an
 * operator calls (pgtrickle.recommend_schedule, pgtrickle.schedule_recommendations), so REST and SQL agree; and
 * applying one.
 */
import { displayName, type QualifiedName } from "../../db/identifiers.ts";
import { findStreamTable, type StreamTableRow } from "../catalog.ts";
import type { DatabaseContext } from "../context.ts";
import { noRecommendation, streamTableNotFound } from "../errors.ts";
import { alterStreamTable } from "../stream_tables.ts";
import type { Reason } from "./recommend.ts";

/** The stored recommendation of one stream table, as pgtrickle.recommend_schedule returns it. */
export interface StoredRecommendation {
  stream_table: string;
  recommended_interval_seconds: number | null;
  recommended_schedule?: string | null;
  peak_window_cron: string | null;
  peak_window_reason?: string | null;
  confidence: number;
  current_interval_seconds: number | null;
  delta_pct: number | null;
  conflicts?: string[];
  reasoning: Reason[];
  computed_at: string | null;
  pass_at: string | null;
}

/** One row of pgtrickle.schedule_recommendations(). */
export interface RecommendationRow {
  stream_table: string;
  current_interval_seconds: number | null;
  recommended_interval_seconds: number | null;
  delta_pct: number | null;
  confidence: number;
  peak_window_cron: string | null;
  reasoning: Reason[];
  computed_at: Date | null;
}

export type RecommendationSort = "delta_pct" | "confidence" | "name";

/** The recommendation for stream table `name`; 404 when there is none of that name. */
export async function getRecommendation(ctx: DatabaseContext, name: QualifiedName): Promise<StoredRecommendation> {
  await mustExist(ctx, name);
  const [row] = await ctx.sql<{ r: StoredRecommendation }[]>`
    SELECT pgtrickle.recommend_schedule(quote_ident(${name.schema}) || '.' || quote_ident(${name.name})) AS r`;
  return row!.r;
}

/** Every stream table's recommendation; by delta_pct (descending, the SQL function's order) unless told otherwise. */
export async function listRecommendations(
  ctx: DatabaseContext,
  options: { sort: RecommendationSort },
): Promise<RecommendationRow[]> {
  const rows = [...await ctx.sql<RecommendationRow[]>`SELECT * FROM pgtrickle.schedule_recommendations()`];
  if (options.sort === "confidence") rows.sort((a, b) => b.confidence - a.confidence);
  if (options.sort === "name") rows.sort((a, b) => (a.stream_table < b.stream_table ? -1 : 1));
  return rows;
}

/** Sets the stream table's schedule to the recommended interval; 409 NoRecommendation when there is none to trust. */
export async function applyRecommendation(
  ctx: DatabaseContext,
  name: QualifiedName,
): Promise<{ previous_schedule: string; st: StreamTableRow; recommendation: StoredRecommendation }> {
  const before = await mustExist(ctx, name);
  const rec = await getRecommendation(ctx, name);
  if (rec.recommended_interval_seconds === null || rec.confidence <= 0) {
    const why = rec.reasoning.filter((r) => r.event === "insufficient_samples" || r.rule === "no_pass_yet");
    throw noRecommendation(displayName(name), why.map((r) => r.detail).join("; ") || "its confidence is 0");
  }
  const st = await alterStreamTable(ctx, name, { schedule: `${rec.recommended_interval_seconds}s` });
  return { previous_schedule: before.schedule, st, recommendation: rec };
}

async function mustExist(ctx: DatabaseContext, name: QualifiedName): Promise<StreamTableRow> {
  const st = await findStreamTable(ctx.sql, name);
  if (st === undefined) throw streamTableNotFound(displayName(name), ctx.name);
  return st;
}
