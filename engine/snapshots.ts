/**
 * Snapshots and point-in-time restore (docs/SQL_REFERENCE.md, "Snapshots and restore"). The operations are the SQL
 * functions of sql/migrations/0005_snapshots.sql; this module calls them, in the transactions they need, maps their
 * SQLSTATEs to error codes, and adds what only the service knows: recreating a dropped stream table (the create
 * path of stream_tables.ts), the changes pending since a restored frontier and how long catching up should take.
 */
import type { Tx } from "../db/pool.ts";
import { isPgError, isRetryable } from "../db/errors.ts";
import { displayName, isIdentifier, type QualifiedName, quoteQualified } from "../db/identifiers.ts";
import { findStreamTable, type RefreshMode } from "./catalog.ts";
import { deltaStats, pruneBuffer, removeCaptureIfUnused } from "./cdc.ts";
import type { DatabaseContext } from "./context.ts";
import { type ErrorCode, invalidName, reservedSchema, TrickleError } from "./errors.ts";
import { isReservedSchema } from "./names.ts";
import { chooseAction, costEstimate } from "./refresh/refresh.ts";
import { createStreamTable } from "./stream_tables.ts";

/** The SQL functions' SQLSTATEs (class PT) and the error codes they are answered with. */
const SQLSTATE_CODES: Record<string, ErrorCode> = {
  PTN01: "StreamTableNotFound",
  PTN02: "SnapshotSourceNotFound",
  PTN03: "SnapshotNotFound",
  PTV01: "InvalidName",
  PTC01: "SnapshotAlreadyExists",
  PTC02: "SnapshotSchemaVersionMismatch",
  PTC03: "SnapshotHashMismatch",
  PTC04: "SnapshotIncompatible",
  PTC05: "StreamTableBusy",
};

/** Seconds a client is asked to wait before retrying a snapshot or restore that found the stream table busy. */
const BUSY_RETRY_SECONDS = 5;

/** How long a snapshot or restore waits for a refresh of the same stream table to finish. */
export const LOCK_WAIT_MS = 10_000;

/** A PT-class error of the SQL functions as the TrickleError it means; anything else unchanged. */
function mapped(e: unknown): unknown {
  if (!isPgError(e)) return e;
  const code = SQLSTATE_CODES[e.code];
  if (code === undefined) return e;
  const extra = code === "StreamTableBusy" ? { retry_after_seconds: BUSY_RETRY_SECONDS } : {};
  // The code is one of the table's, chosen at run time: the constructor's per-code tuple type cannot see that.
  return new TrickleError(...[code, e.message, extra] as ConstructorParameters<typeof TrickleError>);
}

/**
 * Runs `fn` (given the milliseconds it may still wait for the lock) with the SQL functions' errors mapped. A
 * REPEATABLE READ transaction (a restore) that waited for a refresh to commit fails with a serialization error (its
 * snapshot predates that refresh): it is retried, with a new snapshot, until LOCK_WAIT_MS have passed.
 */
async function call<T>(fn: (waitMs: number) => Promise<T>, label = "the stream table"): Promise<T> {
  const deadline = performance.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      return await fn(Math.max(1, Math.round(deadline - performance.now())));
    } catch (e) {
      if (!isRetryable(e)) throw mapped(e);
      if (performance.now() >= deadline) {
        throw new TrickleError(
          "StreamTableBusy",
          `Stream table ${label} was refreshed without pause for ${LOCK_WAIT_MS} ms; retry`,
          { retry_after_seconds: BUSY_RETRY_SECONDS },
        );
      }
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
    }
  }
}

/**
 * A snapshot's name from a request: `schema.name`, or `name` in schema pgtrickle (where snapshots go by default).
 * Identifiers only; the system schemas and pgtrickle_changes are refused.
 */
export function parseSnapshotName(input: string, what = "snapshot name"): QualifiedName {
  const parts = input.split(".");
  if (parts.length > 2 || !parts.every(isIdentifier)) throw invalidName(input, what);
  const q = parts.length === 2 ? { schema: parts[0]!, name: parts[1]! } : { schema: "pgtrickle", name: parts[0]! };
  if (q.schema !== "pgtrickle" && isReservedSchema(q.schema)) throw reservedSchema(input, { what, schema: q.schema });
  return q;
}

/** A snapshot as its catalog row records it. */
export interface Snapshot {
  snapshot: string;
  stream_table: string;
  created_at: Date;
  row_count: number;
  frontier: string | null;
  size_bytes: number;
  retention_state: "retained" | "rows_only";
  rows_only_reason: string | null;
  /** Changes in the sources' buffers since its frontier, which it keeps from being pruned (0 when rows_only). */
  pinned_changes: number;
  content_hash: string;
  catalog_schema_version: number;
}

const LIST_COLUMNS = (tx: Tx) =>
  tx`snapshot, stream_table, created_at, row_count, frontier::text AS frontier, size_bytes, retention_state,
    rows_only_reason, pinned_changes, content_hash, catalog_schema_version`;

/** Snapshots `streamTable` into `target` (default pgtrickle.snapshot_<name>_<epoch ms>); the snapshot as listed. */
export async function takeSnapshot(
  ctx: DatabaseContext,
  input: { streamTable: QualifiedName; target: QualifiedName | null },
): Promise<Snapshot> {
  // READ COMMITTED: under the refresh's lock the rows copied and the frontier recorded match in any isolation level
  // (the SQL function says why), and a snapshot that waited for a refresh gets the lock when it commits, reading what
  // it committed. A REPEATABLE READ one would fail then (its snapshot predates that commit) and retry behind the next
  // refresh: under refreshes back to back it found the lock free only by chance, and gave up after LOCK_WAIT_MS.
  const snapshot = await call((waitMs) =>
    ctx.sql.begin(async (tx) => {
      const [row] = await tx<{ snapshot: string }[]>`
        SELECT snapshot_schema || '.' || snapshot_name AS snapshot FROM pgtrickle.snapshot_stream_table(
          ${quoteQualified(input.streamTable)}, ${input.target === null ? null : quoteQualified(input.target)},
          ${waitMs})`;
      return row!.snapshot;
    }), `"${input.streamTable.schema}.${input.streamTable.name}"`);
  ctx.log.info("snapshot taken", { stream_table: displayName(input.streamTable), snapshot });
  return await getSnapshot(ctx, parseSnapshotName(snapshot));
}

/** Every snapshot, or those of one stream table, newest first, with live sizes and the changes each pins. */
export async function listSnapshots(ctx: DatabaseContext, streamTable: QualifiedName | null): Promise<Snapshot[]> {
  return await call(async () => [
    ...await ctx.sql.begin((tx) =>
      tx<Snapshot[]>`SELECT ${LIST_COLUMNS(tx)} FROM pgtrickle.list_snapshots(${
        streamTable === null ? null : quoteQualified(streamTable)
      })`
    ),
  ]);
}

/** One snapshot; 404 SnapshotNotFound. */
export async function getSnapshot(ctx: DatabaseContext, name: QualifiedName): Promise<Snapshot> {
  const found = await call(() =>
    ctx.sql.begin((tx) =>
      tx<Snapshot[]>`SELECT ${LIST_COLUMNS(tx)} FROM pgtrickle.list_snapshots(NULL, ${quoteQualified(name)})`
    )
  );
  if (found[0] === undefined) {
    throw new TrickleError("SnapshotNotFound", `Snapshot "${name.schema}.${name.name}" does not exist`);
  }
  return found[0];
}

/**
 * Drops a snapshot (its table and catalog row). Its pin goes with it: the buffers of its sources are pruned at once,
 * and capture that only it kept (its stream table dropped) is removed.
 */
export async function dropSnapshot(ctx: DatabaseContext, name: QualifiedName): Promise<void> {
  const sources = await call(() =>
    ctx.sql.begin(async (tx) => {
      const [row] = await tx<{ sources: number[] }[]>`
        SELECT source_relids::int8[] AS sources FROM pgtrickle.drop_snapshot(${quoteQualified(name)})`;
      return row!.sources;
    })
  );
  for (const relid of sources) {
    await ctx.sql.begin(async (tx) => {
      if (!await removeCaptureIfUnused(tx, relid)) await pruneBuffer(tx, relid, ctx.settings);
    });
  }
  ctx.log.info("snapshot dropped", { snapshot: `${name.schema}.${name.name}` });
}

/** What a restore did, and what comes next. */
export interface RestoreResult {
  stream_table: string;
  snapshot: string;
  /** True when the stream table did not exist and was recreated from the snapshot. */
  recreated: boolean;
  rows_restored: number;
  frontier: string | null;
  duration_ms: number;
  next_refresh: { mode: "FULL" | "DIFFERENTIAL"; reason: string | null };
  /** Changes in the sources' buffers since the restored frontier (null when the next refresh is FULL). */
  pending_changes: number | null;
  /** What catching up should take, from the stream table's refresh history (null without history). */
  catch_up_estimate_ms: number | null;
}

interface RestoreRow {
  stream_table: string;
  snapshot: string;
  rows_restored: number;
  frontier: string | null;
  next_refresh: "FULL" | "DIFFERENTIAL";
  reason: string | null;
}

/**
 * Restores `streamTable` from snapshot `source` in one transaction (rows, frontier); when the stream table does not
 * exist, recreates it from the snapshot (defining query, schedule, mode) and restores into it.
 */
export async function restoreSnapshot(
  ctx: DatabaseContext,
  input: { streamTable: QualifiedName; source: QualifiedName; verify: boolean },
): Promise<RestoreResult> {
  const t0 = performance.now();
  const restore = () =>
    call((waitMs) =>
      ctx.sql.begin("isolation level repeatable read", async (tx) => {
        const [row] = await tx<RestoreRow[]>`
          SELECT stream_table, snapshot, rows_restored, frontier::text AS frontier, next_refresh, reason
          FROM pgtrickle.restore_from_snapshot(${quoteQualified(input.streamTable)}, ${quoteQualified(input.source)},
            ${input.verify}, ${waitMs})`;
        return row!;
      }), `"${input.streamTable.schema}.${input.streamTable.name}"`);
  let restored: RestoreRow | undefined;
  let recreated = false;
  if (await findStreamTable(ctx.sql, input.streamTable) === undefined) {
    const snap = await recorded(ctx, input.source);
    recreated = true;
    await createStreamTable(ctx, {
      name: input.streamTable,
      query: snap.defining_query,
      schedule: snap.schedule,
      refreshMode: snap.refresh_mode,
      freshnessDeadlineMs: snap.freshness_deadline_ms === null ? null : Number(snap.freshness_deadline_ms),
      initialContent: async () => {
        restored = await restore();
      },
    });
  } else {
    restored = await restore();
  }
  const r = restored!;
  const durationMs = performance.now() - t0;
  const next = await nextRefresh(ctx, input.streamTable, r);
  ctx.log.info("stream table restored", {
    stream_table: r.stream_table,
    snapshot: r.snapshot,
    recreated,
    rows: r.rows_restored,
    next_refresh: next.next_refresh.mode,
  });
  return {
    stream_table: r.stream_table,
    snapshot: r.snapshot,
    recreated,
    rows_restored: Number(r.rows_restored),
    frontier: r.frontier,
    duration_ms: durationMs,
    ...next,
  };
}

/** The catalog row of a snapshot, for a recreate; 404 SnapshotSourceNotFound. */
async function recorded(ctx: DatabaseContext, source: QualifiedName) {
  const [snap] = await ctx.sql<
    { defining_query: string; schedule: string; refresh_mode: RefreshMode; freshness_deadline_ms: number | null }[]
  >`
    SELECT defining_query, schedule, refresh_mode, freshness_deadline_ms FROM pgtrickle.pgt_snapshots
    WHERE snapshot_schema = ${source.schema} AND snapshot_name = ${source.name}`;
  if (snap === undefined) {
    throw new TrickleError("SnapshotSourceNotFound", `Snapshot "${source.schema}.${source.name}" does not exist`);
  }
  return snap;
}

/**
 * The next refresh as the refresh will decide it (chooseAction), from the changes pending since the restored
 * frontier, and its expected duration from the cost history: the same prediction the refresh uses, else the last
 * refresh of that kind.
 */
async function nextRefresh(
  ctx: DatabaseContext,
  name: QualifiedName,
  r: RestoreRow,
): Promise<Pick<RestoreResult, "next_refresh" | "pending_changes" | "catch_up_estimate_ms">> {
  const st = await findStreamTable(ctx.sql, name);
  if (st === undefined) {
    return {
      next_refresh: { mode: r.next_refresh, reason: r.reason },
      pending_changes: null,
      catch_up_estimate_ms: null,
    };
  }
  return await ctx.sql.begin("isolation level repeatable read", async (tx) => {
    const costs = await costEstimate(tx, st.pgt_id);
    if (r.frontier === null) {
      return {
        next_refresh: { mode: "FULL" as const, reason: r.reason },
        pending_changes: null,
        catch_up_estimate_ms: costs.fullMs ?? st.last_full_ms,
      };
    }
    const relids = (await tx<{ relid: number }[]>`
      SELECT source_relid::int8 AS relid FROM pgtrickle.pgt_dependencies WHERE pgt_id = ${st.pgt_id}`).map((d) =>
      d.relid
    );
    let pending = 0;
    let truncated = false;
    for (const relid of relids) {
      const s = await deltaStats(tx, relid, r.frontier!);
      pending += s.rows;
      truncated ||= s.truncated;
    }
    const [size] = await tx<{ n: number }[]>`
      SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8 AS n FROM pg_class c WHERE c.oid = ANY(${relids}::oid[])`;
    const decision = chooseAction({
      mode: st.effective_refresh_mode,
      hasFrontier: true,
      deltaRows: pending,
      truncated,
      // Statistics may be missing (never analysed); then the ratio is not predicted.
      sourceRows: size!.n > 0 ? size!.n : Number.MAX_SAFE_INTEGER,
      maxChangeRatio: ctx.settings.differentialMaxChangeRatio,
      predictedDiffMs: costs.msPerDeltaRow === null ? null : costs.msPerDeltaRow * pending,
      predictedFullMs: costs.fullMs,
    });
    const mode = decision.action === "FULL" ? "FULL" as const : "DIFFERENTIAL" as const;
    const estimate = decision.action === "NO_DATA"
      ? 0
      : mode === "FULL"
      ? costs.fullMs ?? st.last_full_ms
      : costs.msPerDeltaRow !== null
      ? costs.msPerDeltaRow * pending
      : st.last_diff_ms;
    return {
      next_refresh: { mode, reason: decision.reason },
      pending_changes: pending,
      catch_up_estimate_ms: estimate,
    };
  });
}
