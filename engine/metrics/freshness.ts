/**
 * Freshness lag: the age of the oldest committed source change a stream table does not hold yet; 0 when it holds
 * every committed change.
 *
 * The changes a stream table lacks are exactly its next delta: buffer rows whose `xid` is not visible in its frontier
 * (docs/architecture.md, frontiers). Any buffer row this scrape can read was committed. PostgreSQL records no commit
 * time (unless `track_commit_timestamp` is on), so the commit is bracketed with the frontier itself and with
 * snapshots the service took at known times: a transaction not visible in snapshot S committed after S was taken; one
 * visible in S committed before. Lower bounds on the commit time are the stream table's `last_refresh_at` (taken
 * before its frontier) and the latest sample in which the change was still invisible; the lag reported is now minus
 * that bound, so it errs high, by at most the time between two samples (one scrape interval), never low.
 *
 * This reads the change buffers (the changes not yet applied, which pruning keeps small), never the refresh history.
 */
import type { Sql } from "../../db/pool.ts";
import { bufferName } from "../cdc.ts";
import type { SnapshotSample } from "./registry.ts";

export interface LagInput {
  /** Stream tables with a frontier: id, frontier, `last_refresh_at` (Unix seconds). */
  streamTables: { pgt_id: number; frontier: string; last_refresh_at: number | null }[];
  /** Which buffer (source relid) each stream table reads. */
  reads: { pgt_id: number; source_relid: number }[];
  /** Earlier samples, oldest first, then this scrape's own (taken before any buffer is read). */
  samples: SnapshotSample[];
  /** The scrape's time (Unix seconds, the database's clock). */
  now: number;
}

export interface LagResult {
  /** Seconds per stream table with a frontier. */
  lag: Map<number, number>;
  /** Rows per change buffer (source relid). */
  bufferRows: Map<number, number>;
}

/** Lag per stream table and rows per change buffer, one read of each buffer. */
export async function freshness(sql: Sql, input: LagInput): Promise<LagResult> {
  const lowest = new Map<number, number>(); // pgt_id -> earliest lower bound of a pending change's commit
  const bufferRows = new Map<number, number>();
  const byId = new Map(input.streamTables.map((s) => [s.pgt_id, s]));
  const readers = new Map<number, number[]>();
  for (const r of input.reads) {
    if (!byId.has(r.pgt_id)) continue;
    readers.set(r.source_relid, [...(readers.get(r.source_relid) ?? []), r.pgt_id]);
  }
  const snapshots = input.samples.map((s) => s.snapshot);
  for (const [relid, ids] of readers) {
    let rows: { pgt_id: number | null; v: number }[];
    try {
      rows = await readBuffer(sql, relid, { ids, frontiers: ids.map((id) => byId.get(id)!.frontier), snapshots });
    } catch (e) {
      // Dropped with its last reader between the catalog read and this one: nothing is pending there any more.
      if ((e as { code?: string }).code === "42P01") continue;
      throw e;
    }
    for (const r of rows) {
      if (r.pgt_id === null) {
        bufferRows.set(relid, r.v);
        continue;
      }
      // r.v: the 1-based first sample seeing the oldest pending change (samples.length + 1: none of them does).
      const before = r.v >= 2 ? input.samples[r.v - 2]!.at : -Infinity;
      const bound = Math.max(before, byId.get(r.pgt_id)!.last_refresh_at ?? -Infinity);
      lowest.set(r.pgt_id, Math.min(lowest.get(r.pgt_id) ?? Infinity, bound));
    }
  }
  const lag = new Map<number, number>();
  for (const st of input.streamTables) {
    const bound = lowest.get(st.pgt_id);
    // No bound at all (never refreshed in this service's view and older than every sample): the oldest sample's age.
    const since = bound === undefined ? input.now : Number.isFinite(bound) ? bound : input.samples[0]?.at ?? input.now;
    lag.set(st.pgt_id, Math.max(0, input.now - since));
  }
  return { lag, bufferRows };
}

function readBuffer(
  sql: Sql,
  relid: number,
  args: { ids: number[]; frontiers: string[]; snapshots: string[] },
): Promise<{ pgt_id: number | null; v: number }[]> {
  // The buffer's name is built from a catalog oid (an integer) and quoted by bufferName; everything else is a
  // parameter. Grouping by xid first makes the per-sample visibility checks per transaction, not per row.
  return sql.unsafe(
    `WITH x AS MATERIALIZED (SELECT xid, count(*) AS n FROM ${bufferName(relid)} GROUP BY xid),
          r AS (SELECT * FROM unnest($1::int8[], $2::text[]) AS r(pgt_id, f)),
          s AS (SELECT * FROM unnest($3::text[]) WITH ORDINALITY AS s(snap, i))
     SELECT NULL::int8 AS pgt_id, coalesce(sum(n), 0)::int8 AS v FROM x
     UNION ALL
     SELECT r.pgt_id, min(coalesce(
              (SELECT min(s.i) FROM s WHERE pg_visible_in_snapshot(x.xid, s.snap::pg_snapshot)),
              $4))::int8
       FROM r JOIN x ON x.xid >= pg_snapshot_xmin(r.f::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(x.xid, r.f::pg_snapshot)
      GROUP BY r.pgt_id`,
    [args.ids, args.frontiers, args.snapshots, args.snapshots.length + 1],
  ) as unknown as Promise<{ pgt_id: number | null; v: number }[]>;
}
