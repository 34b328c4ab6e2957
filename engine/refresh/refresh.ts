/**
 * One refresh of one stream table (docs/architecture.md: frontiers, refresh). It runs in a single REPEATABLE READ transaction
 * whose snapshot S becomes the new frontier: the content written and `frontier = S` commit together, so a crash or
 * a rollback leaves the last committed state. The catalog row is locked first, so one stream table never refreshes
 * twice at once; a concurrent change to it makes the transaction fail with a serialization error and retry.
 */
import type { Tx } from "../../db/pool.ts";
import { isPgError, LOCK_NOT_AVAILABLE, withRetry } from "../../db/errors.ts";
import { lockStreamTable, type StreamTableRow } from "../catalog.ts";
import { type DeltaStats, deltaStats, tableName } from "../cdc.ts";
import type { DatabaseContext } from "../context.ts";
import {
  type CostSample,
  PREDICTION_WINDOW,
  type RefreshCostPrediction,
  refreshCostPrediction,
} from "../cost_model.ts";
import { judgeSources, readSources } from "../source_check.ts";
import { TrickleError } from "../errors.ts";
import type { RefreshFacts } from "../events.ts";
import { nextDueAfter } from "../schedule.ts";
import { applyFull } from "./full.ts";
import { schedulePrune } from "./prune.ts";
import { applyDifferential } from "./differential/differential.ts";

export type Initiator = "CREATE" | "SCHEDULER" | "MANUAL";
export type Action = "FULL" | "DIFFERENTIAL" | "NO_DATA";

export interface RefreshResult {
  pgt_id: number;
  action: Action;
  reason: string | null;
  rows_inserted: number;
  rows_deleted: number;
  delta_rows: number;
  duration_ms: number;
  frontier: string;
}

export interface RefreshOptions {
  initiatedBy: Initiator;
  /** Give up at once when another refresh of the same stream table is running (the scheduler's way). */
  skipIfBusy?: boolean;
}

/** Thrown (and not recorded as a failure) when `skipIfBusy` finds the stream table being refreshed. */
export class RefreshBusy extends TrickleError {
  constructor(pgtId: number) {
    super("RefreshInProgress", `Stream table ${pgtId} is being refreshed by another worker`);
  }
}

interface Decision {
  action: Action;
  reason: string | null;
  deltaRows: number;
}

/** Chooses FULL, DIFFERENTIAL or NO_DATA for a refresh; pure, for tests. */
export function chooseAction(input: {
  mode: "FULL" | "DIFFERENTIAL";
  hasFrontier: boolean;
  deltaRows: number;
  truncated: boolean;
  sourceRows: number;
  maxChangeRatio: number;
  predictedDiffMs: number | null;
  predictedFullMs: number | null;
}): Decision {
  const d = input.deltaRows;
  if (!input.hasFrontier) return { action: "FULL", reason: "initial refresh", deltaRows: d };
  if (d === 0) return { action: "NO_DATA", reason: null, deltaRows: 0 };
  if (input.mode === "FULL") return { action: "FULL", reason: "refresh mode FULL", deltaRows: d };
  if (input.truncated) return { action: "FULL", reason: "a source was truncated", deltaRows: d };
  const ratio = d / Math.max(1, input.sourceRows);
  if (ratio > input.maxChangeRatio) {
    return {
      action: "FULL",
      reason: `${d} changed rows are ${(ratio * 100).toFixed(1)}% of the sources' ${input.sourceRows} rows, ` +
        `above differential_max_change_ratio ${input.maxChangeRatio}`,
      deltaRows: d,
    };
  }
  if (
    input.predictedDiffMs !== null && input.predictedFullMs !== null && input.predictedDiffMs > input.predictedFullMs
  ) {
    return {
      action: "FULL",
      reason: `cost history predicts DIFFERENTIAL ${input.predictedDiffMs.toFixed(1)} ms > FULL ` +
        `${input.predictedFullMs.toFixed(1)} ms`,
      deltaRows: d,
    };
  }
  return { action: "DIFFERENTIAL", reason: null, deltaRows: d };
}

/** Refreshes one stream table now; records history; counts failures toward ERROR. */
export async function refreshStreamTable(
  ctx: DatabaseContext,
  pgtId: number,
  options: RefreshOptions,
): Promise<RefreshResult> {
  const startedAt = ctx.clock.now();
  const t0 = performance.now();
  let sources: number[] = [];
  let attempted: Action = "FULL";
  let facts: RefreshFacts | null = null;
  try {
    const result = await withRetry(() =>
      ctx.sql.begin("isolation level repeatable read", async (tx) => {
        // Sent together (one round trip): the lock's statement is the transaction's first, so it takes the snapshot
        // S that the others read: S itself, the sources' state, and the delta counts of the sources this stream
        // table had at its last refresh (a stream table's sources do not change; they are checked below).
        const known = knownSources.get(ctx)?.get(pgtId) ?? [];
        const [locked, snap, states, ...counted] = await settledInOrder([
          lockOrSkip(tx, pgtId, options),
          tx<{ s: string }[]>`SELECT pg_current_snapshot()::text AS s`.then((r) => r[0]!),
          readSources(tx, pgtId),
          ...known.map((relid) => deltaStats(tx, relid, { of: pgtId })),
        ]) as [StreamTableRow, { s: string }, Awaited<ReturnType<typeof readSources>>, ...DeltaStats[]];
        // A source dropped or changed under the stream table fails here with its reason, or forces a FULL refresh.
        const { st, fullReason: sourceReason, relids } = await judgeSources(tx, locked, states);
        // A restore that could not keep the changes since its snapshot left the reason here (engine/snapshots.ts).
        const fullReason = sourceReason ?? st.pending_full_reason;
        sources = relids;
        rememberSources(ctx, pgtId, relids);
        const stats = sameSet(known, relids) ? new Map(known.map((relid, i) => [relid, counted[i]!])) : null;
        const changes = new Map<number, number>();
        const decision = fullReason === null
          ? await decide(ctx, tx, { st, sources, changes, stats })
          : { action: "FULL" as const, reason: fullReason, deltaRows: 0 };
        attempted = decision.action;
        const target = { schema: st.pgt_schema, name: st.pgt_name };
        let counts = { inserted: 0, deleted: 0 };
        if (decision.action === "FULL") {
          counts = await applyFull(tx, { plan: st.plan, target });
        } else if (decision.action === "DIFFERENTIAL") {
          // The sources' columns as read with the lock: the delta tables are kept per session and source shape.
          const shapes = new Map(states.map((x) => [Number(x.relid), JSON.stringify(x.now)]));
          const r = await applyDifferential(tx, { plan: st.plan, target, frontier: st.frontier!, changes, shapes });
          counts = { inserted: r.inserted, deleted: r.deleted };
        }
        const durationMs = performance.now() - t0;
        const due = nextDueAfter(st.schedule, startedAt);
        if (due.error !== null) ctx.log.warn("a stream table is not scheduled", { pgt_id: pgtId, error: due.error });
        const rowCount = decision.action === "FULL" ? counts.inserted : st.row_count + counts.inserted - counts.deleted;
        facts = {
          db_name: ctx.name,
          db_oid: ctx.oid,
          pgt_id: pgtId,
          stream_table: `${st.pgt_schema}.${st.pgt_name}`,
          action: decision.action,
          reason: decision.reason,
          initiated_by: options.initiatedBy,
          duration_ms: durationMs,
          rows_inserted: counts.inserted,
          rows_deleted: counts.deleted,
          delta_rows: decision.deltaRows,
        };
        // The catalog and history writes, and the effects that must commit with this refresh (an alert outbox row:
        // the committing hooks), are sent together (one round trip where the hooks need one statement).
        await settledInOrder([
          // Only the frontier moves. Losing this commit in a crash leaves the previous frontier, which is just as
          // exact, so the commit need not wait for the WAL flush.
          ...(decision.action === "NO_DATA" ? [tx`SET LOCAL synchronous_commit = off`] : []),
          tx`
          UPDATE pgtrickle.pgt_stream_tables SET
            frontier = ${snap.s}::pg_snapshot,
            row_count = ${rowCount},
            last_refresh_at = ${startedAt},
            last_full_ms = ${decision.action === "FULL" ? durationMs : st.last_full_ms},
            last_diff_ms = ${decision.action === "DIFFERENTIAL" ? durationMs : st.last_diff_ms},
            consecutive_errors = 0,
            last_error = ${due.error},
            pending_full_reason = NULL,
            next_due_at = ${due.at},
            status = CASE WHEN status = 'INITIALIZING' THEN 'ACTIVE' ELSE status END,
            updated_at = now()
          WHERE pgt_id = ${pgtId}`,
          tx`
          INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, finished_at, duration_ms, action, status,
            rows_inserted, rows_deleted, delta_rows, initiated_by, reason)
          VALUES (${pgtId}, ${startedAt}, ${new Date(startedAt.getTime() + durationMs)}, ${durationMs},
            ${decision.action}, 'SUCCESS', ${counts.inserted}, ${counts.deleted}, ${decision.deltaRows},
            ${options.initiatedBy}, ${decision.reason})`,
          ctx.events.refreshCommitting(tx, facts),
        ]);
        return {
          pgt_id: pgtId,
          action: decision.action,
          reason: decision.reason,
          rows_inserted: counts.inserted,
          rows_deleted: counts.deleted,
          delta_rows: decision.deltaRows,
          duration_ms: durationMs,
          frontier: snap.s,
        } satisfies RefreshResult;
      })
    );
    ctx.events.emit({ type: "refresh_committed", ...facts! });
    if (result.delta_rows > 0) schedulePrune(ctx, sources);
    return result;
  } catch (e) {
    if (e instanceof RefreshBusy || (e instanceof TrickleError && e.code === "StreamTableNotFound")) throw e;
    await recordFailure(ctx, pgtId, { error: e, startedAt, durationMs: performance.now() - t0, options, attempted });
    throw e;
  }
}

async function lockOrSkip(tx: Tx, pgtId: number, options: RefreshOptions): Promise<StreamTableRow> {
  try {
    const st = await lockStreamTable(tx, pgtId, { nowait: options.skipIfBusy ?? false });
    if (st === undefined) throw new TrickleError("StreamTableNotFound", `Stream table ${pgtId} no longer exists`);
    return st;
  } catch (e) {
    if (isPgError(e) && e.code === LOCK_NOT_AVAILABLE) throw new RefreshBusy(pgtId);
    throw e;
  }
}

/** Chooses the action; fills `changes` with each source's delta size. */
async function decide(
  ctx: DatabaseContext,
  tx: Tx,
  input: { st: StreamTableRow; sources: number[]; changes: Map<number, number>; stats: Map<number, DeltaStats> | null },
): Promise<Decision> {
  const { st, sources, changes } = input;
  if (st.frontier === null) {
    return chooseAction({
      mode: st.effective_refresh_mode,
      hasFrontier: false,
      deltaRows: 0,
      truncated: false,
      sourceRows: 0,
      maxChangeRatio: ctx.settings.differentialMaxChangeRatio,
      predictedDiffMs: null,
      predictedFullMs: null,
    });
  }
  let deltaRows = 0;
  let truncated = false;
  // Counted with the lock already, unless the sources were not known then; else one round trip for all sources.
  const stats = input.stats !== null
    ? sources.map((relid) => input.stats!.get(relid)!)
    : await Promise.all(sources.map((relid) => deltaStats(tx, relid, st.frontier!)));
  sources.forEach((relid, i) => {
    deltaRows += stats[i]!.rows;
    truncated ||= stats[i]!.truncated;
    changes.set(relid, stats[i]!.rows);
  });
  let sourceRows = 0;
  let predictedDiffMs: number | null = null;
  let predictedFullMs: number | null = null;
  if (deltaRows > 0 && st.effective_refresh_mode === "DIFFERENTIAL" && !truncated) {
    const [size] = await tx<{ n: number }[]>`
      SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8 AS n FROM pg_class c WHERE c.oid = ANY(${sources}::oid[])`;
    sourceRows = size!.n;
    if (sourceRows < deltaRows) {
      // Never analysed (reltuples -1) or stale statistics: count exactly; such tables are small.
      sourceRows = 0;
      for (const relid of sources) {
        // regclass::text is the server's own quoted rendering of the table's name.
        const [r] = await tx.unsafe<{ n: number }[]>(
          `SELECT count(*)::int8 AS n FROM ${await tableName(tx, relid)}`,
        );
        sourceRows += r!.n;
      }
    }
    const costs = await costEstimate(tx, st.pgt_id);
    if (costs.msPerDeltaRow !== null) predictedDiffMs = costs.msPerDeltaRow * deltaRows;
    predictedFullMs = costs.fullMs;
  }
  return chooseAction({
    mode: st.effective_refresh_mode,
    hasFrontier: true,
    deltaRows,
    truncated,
    sourceRows,
    maxChangeRatio: ctx.settings.differentialMaxChangeRatio,
    predictedDiffMs,
    predictedFullMs,
  });
}

/** The cost model's prediction from the latest successful refreshes of each action (engine/cost_model.ts). */
export async function costEstimate(tx: Tx, pgtId: number): Promise<RefreshCostPrediction> {
  const samples = await tx<CostSample[]>`
    SELECT action, duration_ms, delta_rows, started_at FROM (
      SELECT action, duration_ms, delta_rows, started_at,
        row_number() OVER (PARTITION BY action ORDER BY refresh_id DESC) AS rn
      FROM pgtrickle.pgt_refresh_history
      WHERE pgt_id = ${pgtId} AND status = 'SUCCESS' AND action IN ('FULL', 'DIFFERENTIAL')
    ) recent WHERE rn <= ${PREDICTION_WINDOW}`;
  return refreshCostPrediction(samples);
}

async function recordFailure(
  ctx: DatabaseContext,
  pgtId: number,
  f: { error: unknown; startedAt: Date; durationMs: number; options: RefreshOptions; attempted: Action },
): Promise<void> {
  const message = f.error instanceof Error ? f.error.message : String(f.error);
  // No retry can bring back a dropped or changed source: ERROR at once.
  const sourceGone = f.error instanceof TrickleError && f.error.code === "SourceChanged";
  try {
    const failed = await ctx.sql.begin(async (tx) => {
      const [row] = await tx<{ consecutive_errors: number; status: string; name: string }[]>`
        UPDATE pgtrickle.pgt_stream_tables SET
          consecutive_errors = consecutive_errors + 1,
          last_error = ${message},
          status = CASE WHEN (consecutive_errors + 1 >= ${ctx.settings.maxConsecutiveErrors} OR ${sourceGone})
            AND status <> 'SUSPENDED' THEN 'ERROR' ELSE status END,
          updated_at = now()
        WHERE pgt_id = ${pgtId}
        RETURNING consecutive_errors, status, pgt_schema || '.' || pgt_name AS name`;
      if (row === undefined) return null;
      await tx`
        INSERT INTO pgtrickle.pgt_refresh_history (pgt_id, started_at, finished_at, duration_ms, action, status,
          initiated_by, error)
        VALUES (${pgtId}, ${f.startedAt}, ${new Date(f.startedAt.getTime() + f.durationMs)}, ${f.durationMs},
          ${f.attempted}, 'FAILED', ${f.options.initiatedBy}, ${message})`;
      ctx.log.warn("refresh failed", {
        pgt_id: pgtId,
        consecutive_errors: row.consecutive_errors,
        status: row.status,
        error: message,
      });
      return row;
    });
    if (failed === null) return;
    ctx.events.emit({
      type: "refresh_failed",
      db_name: ctx.name,
      db_oid: ctx.oid,
      pgt_id: pgtId,
      stream_table: failed.name,
      action: f.attempted,
      initiated_by: f.options.initiatedBy,
      duration_ms: f.durationMs,
      error: message,
      consecutive_errors: failed.consecutive_errors,
      status: failed.status,
    });
  } catch (e) {
    ctx.log.error("could not record a refresh failure", { pgt_id: pgtId, error: e });
  }
}

/**
 * Each stream table's sources as its last refresh found them, per database context: the next refresh counts their
 * deltas in its first round trip. Only a hint: the refresh checks it against the sources it reads.
 */
const knownSources = new WeakMap<DatabaseContext, Map<number, number[]>>();

function rememberSources(ctx: DatabaseContext, pgtId: number, relids: number[]): void {
  let byId = knownSources.get(ctx);
  if (byId === undefined) knownSources.set(ctx, byId = new Map());
  byId.set(pgtId, relids);
}

function sameSet(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

/**
 * Awaits statements sent together on one transaction and returns their results; when some fail, throws the error of
 * the first in sending order (the one that made the rest fail, which PostgreSQL then refuses as an aborted
 * transaction).
 */
async function settledInOrder(promises: Promise<unknown>[]): Promise<unknown[]> {
  const settled = await Promise.allSettled(promises);
  for (const s of settled) if (s.status === "rejected") throw s.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value);
}
