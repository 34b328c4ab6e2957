/**
 * The tick's reads and decisions for one database: which stream tables are due (one indexed query on `next_due_at`,
 * no plan or schedule read), in which order their jobs queue, and the hourly history prune.
 */
import type { Sql } from "../../db/pool.ts";
import type { DatabaseContext } from "../context.ts";

/** A stream table the tick acts on: ACTIVE and due, or INITIALIZING; with the stream tables it reads. */
export interface DueStreamTable {
  pgt_id: number;
  status: "ACTIVE" | "INITIALIZING";
  upstream: number[];
}

/** The stream tables due at `now` and those INITIALIZING (possibly abandoned creations). */
export async function findDue(sql: Sql, now: Date): Promise<DueStreamTable[]> {
  const rows = await sql<{ pgt_id: number; status: "ACTIVE" | "INITIALIZING"; upstream: string[] }[]>`
    SELECT st.pgt_id, st.status, ARRAY(
        SELECT d.source_pgt_id::text FROM pgtrickle.pgt_dependencies d
        WHERE d.pgt_id = st.pgt_id AND d.source_pgt_id IS NOT NULL) AS upstream
    FROM pgtrickle.pgt_stream_tables st
    WHERE (st.status = 'ACTIVE' AND st.next_due_at <= ${now}) OR st.status = 'INITIALIZING'
    ORDER BY st.next_due_at, st.pgt_id`;
  return rows.map((r) => ({ pgt_id: r.pgt_id, status: r.status, upstream: r.upstream.map(Number) }));
}

/** When the next ACTIVE stream table falls due after `now`, or null when none will (the same index as findDue). */
export async function nextDueAt(sql: Sql, now: Date): Promise<Date | null> {
  const [row] = await sql<{ at: Date | null }[]>`
    SELECT min(next_due_at) AS at FROM pgtrickle.pgt_stream_tables WHERE status = 'ACTIVE' AND next_due_at > ${now}`;
  return row?.at ?? null;
}

/** Orders stream tables so that each comes after the ones it reads (among those given). */
export function orderByDependencies<T extends { pgt_id: number }>(items: T[], upstream: Map<number, number[]>): T[] {
  const byId = new Map(items.map((i) => [i.pgt_id, i]));
  const out: T[] = [];
  const seen = new Set<number>();
  const visit = (id: number) => {
    if (seen.has(id)) return;
    seen.add(id);
    for (const up of upstream.get(id) ?? []) visit(up);
    const item = byId.get(id);
    if (item !== undefined) out.push(item);
  };
  for (const i of items) visit(i.pgt_id);
  return out;
}

/** Deletes history older than the retention, at most once an hour per database; returns the new last-prune time. */
export async function pruneHistory(ctx: DatabaseContext, lastPrune: number): Promise<number> {
  const now = ctx.clock.now().getTime();
  if (now - lastPrune < 3_600_000) return lastPrune;
  const cutoff = new Date(now - ctx.settings.historyRetentionDays * 86_400_000);
  await ctx.sql`DELETE FROM pgtrickle.pgt_refresh_history WHERE started_at < ${cutoff}`;
  return now;
}
