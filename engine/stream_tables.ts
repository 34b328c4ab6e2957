/** Creating, altering and dropping stream tables (the catalog's writes). */
import type { Tx } from "../db/pool.ts";
import {
  DUPLICATE_OBJECT,
  DUPLICATE_TABLE,
  FOREIGN_KEY_VIOLATION,
  isPgError,
  isQueryError,
  UNIQUE_VIOLATION,
} from "../db/errors.ts";
import { displayName, type QualifiedName, quoteIdent, quoteQualified } from "../db/identifiers.ts";
import {
  findStreamTable,
  listDependencies,
  lockStreamTable,
  type RefreshMode,
  type StreamTableRow,
} from "./catalog.ts";
import { installCapture, removeCaptureIfUnused } from "./cdc.ts";
import type { DatabaseContext } from "./context.ts";
import {
  hasDependents,
  immediateUnavailable,
  invalidQuery,
  schemaNotFound,
  sourceChanged,
  streamTableExists,
  streamTableNotFound,
  unsupportedQuery,
} from "./errors.ts";
import { describeQuery } from "./query.ts";
import { planQuery } from "./refresh/differential/differential.ts";
import type { QueryPlan } from "./plan.ts";
import { fullOnlyPlan } from "./refresh/full.ts";
import { refreshStreamTable } from "./refresh/refresh.ts";
import { beginCreation } from "./recovery.ts";
import { nextDue, parseSchedule } from "./schedule.ts";

export interface CreateInput {
  name: QualifiedName;
  query: string;
  schedule: string;
  refreshMode: RefreshMode;
  freshnessDeadlineMs: number | null;
  /** Fills the new stream table instead of its initial refresh (a recreate from a snapshot, engine/snapshots.ts). */
  initialContent?: (pgtId: number) => Promise<void>;
}

/** The mode a request resolves to with this plan, or the error refusing it. */
export function effectiveMode(
  requested: RefreshMode,
  plan: QueryPlan,
): { mode: "FULL" | "DIFFERENTIAL"; reason: string | null } {
  switch (requested) {
    case "FULL":
      return { mode: "FULL", reason: null };
    case "IMMEDIATE":
      throw immediateUnavailable();
    case "DIFFERENTIAL":
      if (plan.unsupportedReason !== null) throw unsupportedQuery(plan.unsupportedReason);
      return { mode: "DIFFERENTIAL", reason: null };
    case "AUTO":
      return plan.unsupportedReason === null
        ? { mode: "DIFFERENTIAL", reason: null }
        : { mode: "FULL", reason: plan.unsupportedReason };
  }
}

/**
 * Creates a stream table: validates the query against the database, creates the storage table, registers it,
 * installs change capture on its sources (committed first, see cdc.ts), then runs the initial refresh. When the
 * initial refresh fails, everything created is removed again and the error is returned.
 */
export async function createStreamTable(ctx: DatabaseContext, input: CreateInput): Promise<StreamTableRow> {
  parseSchedule(input.schedule);
  if (input.refreshMode === "IMMEDIATE") throw immediateUnavailable();
  const description = await describeQuery(ctx.sql, input.query);
  // FULL stores the query's result as it is: no hidden columns or key index to maintain (PATCH to AUTO or
  // DIFFERENTIAL re-plans and extends the storage).
  const plan = input.refreshMode === "FULL"
    ? fullOnlyPlan(input.query, description, "refresh mode FULL was requested")
    : await planQuery(ctx.sql, { query: input.query, description });
  const { mode, reason } = effectiveMode(input.refreshMode, plan);
  const label = displayName(input.name);
  // Held until this function returns: a row left INITIALIZING without it was abandoned (see recovery.ts).
  await using creation = await beginCreation(ctx);
  let pgtId: number;
  try {
    pgtId = await ctx.sql.begin(async (tx) => {
      const [taken] = await tx`SELECT to_regclass(${quoteQualified(input.name)}) IS NOT NULL AS t`;
      if (taken?.t === true) throw streamTableExists(label);
      const [schema] = await tx`SELECT 1 FROM pg_namespace WHERE nspname = ${input.name.schema}`;
      if (schema === undefined) {
        throw schemaNotFound(input.name.schema);
      }
      await createStorage(tx, input.name, plan);
      const [rel] = await tx<{ oid: number }[]>`SELECT ${quoteQualified(input.name)}::regclass::oid::int8 AS oid`;
      const [row] = await tx<{ pgt_id: number }[]>`
        INSERT INTO pgtrickle.pgt_stream_tables (pgt_id, pgt_relid, pgt_schema, pgt_name, defining_query,
          refresh_mode, effective_refresh_mode, fallback_reason, schedule, freshness_deadline_ms, plan)
        OVERRIDING SYSTEM VALUE
        VALUES (${creation.pgtId}, ${rel!.oid}, ${input.name.schema}, ${input.name.name}, ${input.query},
          ${input.refreshMode}, ${mode}, ${reason}, ${input.schedule.trim()}, ${input.freshnessDeadlineMs},
          ${tx.json(plan as never)})
        RETURNING pgt_id`;
      for (const s of description.sources) {
        await tx`INSERT INTO pgtrickle.pgt_dependencies (pgt_id, source_relid, source_schema, source_name, source_pgt_id)
          VALUES (${row!.pgt_id}, ${s.relid}, ${s.schema}, ${s.name}, ${s.streamTableId})`;
      }
      return row!.pgt_id;
    });
  } catch (e) {
    // A concurrent creation of the same name fails on the catalog row, the table, or the table's row type.
    if (isPgError(e) && [UNIQUE_VIOLATION, DUPLICATE_TABLE, DUPLICATE_OBJECT].includes(e.code)) {
      throw streamTableExists(label);
    }
    // A stream table the query reads was dropped by another request since the query was described.
    if (isPgError(e) && e.code === FOREIGN_KEY_VIOLATION) {
      throw sourceChanged(`A stream table read by the query of "${label}" was dropped meanwhile; create it again`);
    }
    throw e;
  }
  try {
    // Capture is installed and committed before the initial refresh takes its snapshot (see cdc.ts).
    for (const s of description.sources) await ctx.sql.begin((tx) => installCapture(tx, s));
    if (input.initialContent !== undefined) {
      await input.initialContent(pgtId);
    } else {
      await refreshStreamTable(ctx, pgtId, { initiatedBy: "CREATE" }).catch((e) => {
        // The query was valid but failed on the data (division by zero, a bad cast...): the client's to fix.
        throw isPgError(e) && isQueryError(e)
          ? invalidQuery(`The initial refresh failed: ${e.message}`, { sqlstate: e.code })
          : e;
      });
    }
  } catch (e) {
    await dropById(ctx, pgtId).catch((dropError) =>
      ctx.log.error("could not undo a failed creation", { pgt_id: pgtId, error: dropError })
    );
    throw e;
  }
  ctx.log.info("stream table created", { stream_table: label, pgt_id: pgtId, mode });
  ctx.events.emit({ type: "stream_table_created", ...facts(ctx, pgtId, input.name), refresh_mode: mode });
  const created = await findStreamTable(ctx.sql, input.name);
  // Another request may drop it as soon as it is created.
  if (created?.pgt_id !== pgtId) throw streamTableNotFound(label, ctx.name);
  return created;
}

/**
 * Creates the storage table of a plan. A table the differential engine updates in place keeps 10% of each page
 * free, so most of its updates are HOT (no index entry to write).
 */
export async function createStorage(tx: Tx, name: QualifiedName, plan: QueryPlan): Promise<void> {
  const cols = [...plan.columns, ...plan.hiddenColumns].map((c) => `${quoteIdent(c.name)} ${c.type}`);
  const key = plan.uniqueKey ?? [];
  const keyed = key.length > 0;
  // Column names and types come from PostgreSQL's description of the query, each name quoted.
  await tx.unsafe(`CREATE TABLE ${quoteQualified(name)} (${cols.join(", ")})${keyed ? " WITH (fillfactor = 90)" : ""}`);
  if (keyed) await createKeyIndex(tx, name, key);
  await createPlanIndexes(tx, name, plan);
}

/** The unique index on the engine's row key; unnamed, so PostgreSQL picks a name that cannot clash. */
async function createKeyIndex(tx: Tx, name: QualifiedName, key: string[]): Promise<void> {
  await tx.unsafe(`CREATE UNIQUE INDEX ON ${quoteQualified(name)} (${key.map(quoteIdent).join(", ")})`);
}

/** The plan's further indexes (for example on a partition column the refresh deletes by); unnamed, as above. */
async function createPlanIndexes(tx: Tx, name: QualifiedName, plan: QueryPlan): Promise<void> {
  for (const columns of plan.indexes ?? []) {
    await tx.unsafe(`CREATE INDEX ON ${quoteQualified(name)} (${columns.map(quoteIdent).join(", ")})`);
  }
}

export interface AlterInput {
  schedule?: string;
  refreshMode?: RefreshMode;
  freshnessDeadlineMs?: number | null;
  status?: "ACTIVE" | "SUSPENDED";
}

/** Changes schedule, mode, deadline or status (SUSPENDED; ACTIVE resumes and clears errors). */
export async function alterStreamTable(
  ctx: DatabaseContext,
  name: QualifiedName,
  input: AlterInput,
): Promise<StreamTableRow> {
  if (input.schedule !== undefined) parseSchedule(input.schedule);
  const pgtId = await ctx.sql.begin(async (tx) => {
    const found = await findStreamTable(tx, name);
    if (found === undefined) throw streamTableNotFound(displayName(name), ctx.name);
    // Dropped by another request between the find and the lock.
    const st = await lockStreamTable(tx, found.pgt_id);
    if (st === undefined) throw streamTableNotFound(displayName(name), ctx.name);
    let plan = st.plan;
    if (input.refreshMode === "IMMEDIATE") throw immediateUnavailable();
    if (input.refreshMode !== undefined && input.refreshMode !== "FULL" && plan.differential === null) {
      plan = await upgradePlan(tx, st);
    }
    const mode = input.refreshMode === undefined
      ? { mode: st.effective_refresh_mode, reason: st.fallback_reason }
      : effectiveMode(input.refreshMode, plan);
    const resumed = input.status === "ACTIVE";
    await tx`
      UPDATE pgtrickle.pgt_stream_tables SET
        schedule = ${input.schedule?.trim() ?? st.schedule},
        refresh_mode = ${input.refreshMode ?? st.refresh_mode},
        effective_refresh_mode = ${mode.mode},
        fallback_reason = ${mode.reason},
        freshness_deadline_ms = ${
      input.freshnessDeadlineMs !== undefined ? input.freshnessDeadlineMs : st.freshness_deadline_ms
    },
        status = ${input.status ?? st.status},
        next_due_at = ${
      input.schedule === undefined
        ? tx`next_due_at`
        : nextDue(parseSchedule(input.schedule), st.last_refresh_at, ctx.clock.now())
    },
        consecutive_errors = ${resumed ? 0 : st.consecutive_errors},
        last_error = ${resumed ? null : st.last_error},
        updated_at = now()
      WHERE pgt_id = ${st.pgt_id}`;
    return st.pgt_id;
  });
  ctx.log.info("stream table altered", { stream_table: displayName(name), changes: Object.keys(input) });
  ctx.events.emit({ type: "stream_table_altered", ...facts(ctx, pgtId, name), changes: Object.keys(input) });
  const altered = await findStreamTable(ctx.sql, name);
  if (altered === undefined) throw streamTableNotFound(displayName(name), ctx.name); // dropped since
  return altered;
}

/**
 * A stream table planned for FULL only may be maintainable differentially: plan again and, when it is, add the
 * hidden columns and key index to its storage (same table: grants and readers keep working). The frontier is
 * cleared so the next refresh is FULL and fills them.
 */
async function upgradePlan(tx: Tx, st: StreamTableRow): Promise<QueryPlan> {
  const description = await describeQuery(tx, st.defining_query);
  const plan = await planQuery(tx, { query: st.defining_query, description });
  if (plan.unsupportedReason !== null) return plan;
  const target = { schema: st.pgt_schema, name: st.pgt_name };
  // Hidden column names and types come from the planner (catalog types), each name quoted.
  for (const c of plan.hiddenColumns) {
    await tx.unsafe(`ALTER TABLE ${quoteQualified(target)} ADD COLUMN ${quoteIdent(c.name)} ${c.type}`);
  }
  if (plan.uniqueKey !== null && plan.uniqueKey.length > 0) await createKeyIndex(tx, target, plan.uniqueKey);
  await createPlanIndexes(tx, target, plan);
  await tx`UPDATE pgtrickle.pgt_stream_tables SET plan = ${tx.json(plan as never)}, frontier = NULL
    WHERE pgt_id = ${st.pgt_id}`;
  return plan;
}

/** Drops a stream table, its storage, and the capture on sources no other stream table reads. */
export async function dropStreamTable(ctx: DatabaseContext, name: QualifiedName): Promise<void> {
  const st = await findStreamTable(ctx.sql, name);
  if (st === undefined) throw streamTableNotFound(displayName(name), ctx.name);
  // Not dropped: another request dropped it after the find.
  if (!await dropById(ctx, st.pgt_id, { refuseReaders: displayName(name) })) {
    throw streamTableNotFound(displayName(name), ctx.name);
  }
  ctx.log.info("stream table dropped", { stream_table: displayName(name) });
  ctx.events.emit({ type: "stream_table_dropped", ...facts(ctx, st.pgt_id, name) });
}

/** The facts naming a stream table in an event. */
function facts(ctx: DatabaseContext, pgtId: number, name: QualifiedName) {
  return { db_name: ctx.name, db_oid: ctx.oid, pgt_id: pgtId, stream_table: `${name.schema}.${name.name}` };
}

/** 409 when stream tables read this one; checked under its lock, so no reader is registered meanwhile. */
async function refuseReaders(tx: Tx, pgtId: number, label: string): Promise<void> {
  const dependents = await listDependencies(tx, { readersOf: pgtId });
  if (dependents.length === 0) return;
  const names = await tx<{ n: string }[]>`
    SELECT pgt_schema || '.' || pgt_name AS n FROM pgtrickle.pgt_stream_tables
    WHERE pgt_id = ANY(${dependents.map((d) => d.pgt_id)}) ORDER BY 1`;
  throw hasDependents(label, names.map((r) => r.n));
}

/** Drops stream table `pgtId`; false when it no longer exists. */
async function dropById(
  ctx: DatabaseContext,
  pgtId: number,
  options: { refuseReaders?: string } = {},
): Promise<boolean> {
  const sources = await ctx.sql.begin(async (tx) => {
    const st = await lockStreamTable(tx, pgtId);
    if (st === undefined) return null;
    if (options.refuseReaders !== undefined) await refuseReaders(tx, pgtId, options.refuseReaders);
    const deps = await tx<{ relid: number }[]>`
      SELECT source_relid::int8 AS relid FROM pgtrickle.pgt_dependencies WHERE pgt_id = ${pgtId}`;
    await tx`DELETE FROM pgtrickle.pgt_stream_tables WHERE pgt_id = ${pgtId}`;
    // Capture on the stream table itself (left by a dropped reader) goes first: its guard view pins the table.
    await removeCaptureIfUnused(tx, st.pgt_relid);
    await tx.unsafe(`DROP TABLE IF EXISTS ${quoteQualified({ schema: st.pgt_schema, name: st.pgt_name })}`);
    return deps.map((d) => d.relid);
  });
  if (sources === null) return false;
  for (const relid of sources) await ctx.sql.begin((tx) => removeCaptureIfUnused(tx, relid));
  return true;
}
