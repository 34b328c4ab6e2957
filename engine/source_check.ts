/**
 * Source schema changes, seen at refresh time (docs/architecture.md, change capture: never silently stale). Each dependency row keeps
 * the source's columns as the stream table was planned against them (attnum, name, type); every refresh compares
 * them and the source's identity with the catalog in one query. Then:
 *
 * - a source dropped (or dropped and recreated: another oid), or renamed: the refresh fails with SourceChanged, and
 *   the stream table goes to ERROR at once, since no retry can help;
 * - a column renamed, dropped or retyped, or the capture guard gone: the defining query is described again. When it
 *   no longer works, or its result changed shape, SourceChanged names the source and the change. Otherwise the
 *   stream table is planned again against the new names, capture is brought up to date, and this refresh is FULL
 *   (exact whatever the change meant, and whatever capture missed while its guard was gone);
 * - a column added: nothing to do for a differential plan (it names the columns it reads); a FULL-only plan, which
 *   runs the query's text, is checked to return the same columns (a `SELECT *` would grow).
 */
import type { Tx } from "../db/pool.ts";
import type { StreamTableRow } from "./catalog.ts";
import { CAPTURE_VERSION, type SourceColumn, syncCapture } from "./cdc.ts";
import { sourceChanged, TrickleError } from "./errors.ts";
import { describeQuery } from "./query.ts";
import { planQuery } from "./refresh/differential/differential.ts";
import { fullOnlyPlan } from "./refresh/full.ts";
import type { Column, QueryDescription, QueryPlan } from "./plan.ts";

export interface SourceCheck {
  /** The stream table, with a new plan when a source change required one. */
  st: StreamTableRow;
  /** Set when this refresh must be FULL because a source changed: the reason to record. */
  fullReason: string | null;
  /** The sources' oids (read with the check, so a refresh needs no query of its own for them). */
  relids: number[];
}

export interface SourceState {
  relid: number;
  schema: string;
  name: string;
  seen: SourceColumn[] | null;
  schema_now: string | null;
  name_now: string | null;
  guarded: boolean;
  now: SourceColumn[] | null;
  capture_version: number;
}

/**
 * The stream table's sources as the catalog records them and as they are now: one query, which the refresh sends
 * together with its lock (it needs only the id), then judges with `judgeSources`.
 */
export async function readSources(tx: Tx, pgtId: number): Promise<SourceState[]> {
  return await tx<SourceState[]>`
    SELECT d.source_relid::int8 AS relid, d.source_schema AS schema, d.source_name AS name, d.source_columns AS seen,
      n.nspname AS schema_now, c.relname AS name_now, coalesce(b.capture_version, 0) AS capture_version,
      EXISTS (SELECT 1 FROM pg_class g WHERE g.relname = 'guard_' || d.source_relid
        AND g.relnamespace = 'pgtrickle_changes'::regnamespace) AS guarded,
      (SELECT jsonb_agg(jsonb_build_object('attnum', a.attnum, 'name', a.attname,
          'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS now
    FROM pgtrickle.pgt_dependencies d
    LEFT JOIN pg_class c ON c.oid = d.source_relid
    LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pgtrickle.pgt_change_buffers b ON b.source_relid = d.source_relid
    WHERE d.pgt_id = ${pgtId}
    ORDER BY d.source_schema, d.source_name`;
}

/**
 * Compares the sources `readSources` returned with what the stream table was planned against: adapts the stream table
 * or throws SourceChanged.
 */
export async function judgeSources(tx: Tx, st: StreamTableRow, sources: SourceState[]): Promise<SourceCheck> {
  const changed: { source: SourceState; changes: string[] }[] = [];
  const added: string[] = [];
  for (const s of sources) {
    const label = `"${s.schema}.${s.name}"`;
    if (s.name_now === null) throw sourceChanged(await droppedMessage(tx, st, s));
    if (s.name_now !== s.name || s.schema_now !== s.schema) {
      throw sourceChanged(
        `Source ${label} of stream table "${st.pgt_schema}.${st.pgt_name}" was renamed to ` +
          `"${s.schema_now}.${s.name_now}"; drop and recreate the stream table over its new name`,
      );
    }
    if (s.seen === null) continue;
    const changes = columnChanges(s.seen, s.now ?? []);
    if (!s.guarded) changes.push("its change capture guard was dropped (by DROP ... CASCADE?)");
    const seen = new Set(s.seen.map((c) => c.attnum));
    const fresh = (s.now ?? []).filter((c) => !seen.has(c.attnum)).map((c) => `column "${c.name}" was added`);
    if (changes.length > 0) changed.push({ source: s, changes });
    else if (fresh.length > 0) added.push(`source "${s.schema}.${s.name}" changed: ${fresh.join(", ")}`);
  }
  for (const s of sources) {
    // Capture written by an earlier version names the columns, and a rename would break writes: rewrite it (same
    // buffer, no gap: the old function captures until this transaction commits).
    const rewritten = changed.some((c) => c.source.relid === s.relid);
    if (s.capture_version < CAPTURE_VERSION && s.guarded && !rewritten) await syncCapture(tx, s.relid);
  }
  if (changed.length === 0) {
    // Only columns added: a differential plan names the columns it reads (a `*` was expanded when it was made) and
    // keeps working; a FULL-only plan runs the query's text, whose `*` would now return more columns.
    if (added.length > 0 && st.plan.differential === null) {
      await describeAgain(tx, st, { what: added.join("; "), sources });
    }
    // A first refresh (or the first since the upgrade that added the record) records what the plan was made against.
    if (added.length > 0 || sources.some((s) => s.seen === null)) await recordSeen(tx, st.pgt_id, sources);
    return { st, fullReason: null, relids: sources.map((s) => s.relid) };
  }
  const what = changed.map((c) => `source "${c.source.schema}.${c.source.name}" changed: ${c.changes.join(", ")}`)
    .join("; ");
  const description = await describeAgain(tx, st, { what, sources });
  const plan = await planAgain(tx, st, { description, what });
  for (const c of changed) await syncCapture(tx, c.source.relid);
  await tx`UPDATE pgtrickle.pgt_stream_tables SET plan = ${tx.json(plan as never)} WHERE pgt_id = ${st.pgt_id}`;
  await recordSeen(tx, st.pgt_id, sources);
  return {
    st: { ...st, plan },
    fullReason: `${what}; the defining query still fits, recomputed`,
    relids: sources.map((s) => s.relid),
  };
}

/** The differences between the columns a stream table saw and the source's columns now, in words. */
export function columnChanges(seen: SourceColumn[], now: SourceColumn[]): string[] {
  const byAttnum = new Map(now.map((c) => [c.attnum, c]));
  const out: string[] = [];
  for (const c of seen) {
    const n = byAttnum.get(c.attnum);
    if (n === undefined) out.push(`column "${c.name}" was dropped`);
    else if (n.type !== c.type) out.push(`column "${c.name}" changed type from ${c.type} to ${n.type}`);
    else if (n.name !== c.name) out.push(`column "${c.name}" was renamed to "${n.name}"`);
  }
  return out;
}

async function droppedMessage(tx: Tx, st: StreamTableRow, s: SourceState): Promise<string> {
  const [other] = await tx<{ oid: number | null }[]>`
    SELECT to_regclass(format('%I.%I', ${s.schema}::text, ${s.name}::text))::oid::int8 AS oid`;
  const recreated = other?.oid !== null && other?.oid !== undefined
    ? ` (a table of that name exists again, but it is another table, oid ${other.oid}, without change capture)`
    : "";
  return `Source "${s.schema}.${s.name}" of stream table "${st.pgt_schema}.${st.pgt_name}" was dropped${recreated}; ` +
    `drop and recreate the stream table`;
}

/** Describes the defining query against the sources as they are now; SourceChanged when it no longer fits. */
async function describeAgain(
  tx: Tx,
  st: StreamTableRow,
  input: { what: string; sources: SourceState[] },
): Promise<QueryDescription> {
  const { what } = input;
  let description: QueryDescription;
  try {
    description = await describeQuery(tx, st.defining_query);
  } catch (e) {
    if (e instanceof TrickleError) throw sourceChanged(`The ${what}; the defining query no longer works: ${e.message}`);
    throw e;
  }
  const shape = (cs: Column[]) => cs.map((c) => `"${c.name}" ${c.type}`).join(", ");
  if (shape(description.columns) !== shape(st.plan.columns)) {
    throw sourceChanged(
      `The ${what}; the defining query now returns (${shape(description.columns)}) instead of ` +
        `(${shape(st.plan.columns)})`,
    );
  }
  const relids = (xs: { relid: number }[]) => xs.map((x) => Number(x.relid)).sort().join(",");
  if (relids(description.sources) !== relids(input.sources)) {
    const names = description.sources.map((x) => `"${x.schema}.${x.name}"`).join(", ");
    throw sourceChanged(`The ${what}; the defining query now reads other tables (${names})`);
  }
  return description;
}

/** A new plan for the same query over the renamed columns; SourceChanged when it would not fit the storage. */
async function planAgain(
  tx: Tx,
  st: StreamTableRow,
  input: { description: QueryDescription; what: string },
): Promise<QueryPlan> {
  const { description, what } = input;
  const plan = st.plan.differential === null
    ? fullOnlyPlan(st.defining_query, description, st.plan.unsupportedReason ?? "refresh mode FULL was requested")
    : await planQuery(tx, { query: st.defining_query, description });
  const storage = (p: QueryPlan) =>
    JSON.stringify([p.hiddenColumns, p.uniqueKey, p.indexes ?? [], p.differential === null]);
  if (storage(plan) !== storage(st.plan)) {
    throw sourceChanged(
      `The ${what}; the defining query can no longer be maintained as before` +
        (plan.unsupportedReason === null ? "" : ` (${plan.unsupportedReason})`) +
        `: drop and recreate the stream table`,
    );
  }
  return plan;
}

/** Records the sources' current columns as the ones this stream table is planned against. */
async function recordSeen(tx: Tx, pgtId: number, sources: SourceState[]): Promise<void> {
  for (const s of sources) {
    await tx`UPDATE pgtrickle.pgt_dependencies SET source_columns = ${tx.json((s.now ?? []) as never)}
      WHERE pgt_id = ${pgtId} AND source_relid = ${s.relid}`;
  }
}
