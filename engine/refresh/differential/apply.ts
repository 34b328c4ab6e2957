/**
 * Applying a differential refresh: which sources changed (counted, or as the caller counted them), where their
 * deltas are read from (straight from the buffer, or a temporary table with statistics), and running each block's
 * write statement in the refresh transaction. The SQL itself comes from the strategies; this module only runs it.
 */
import type { Tx } from "../../../db/pool.ts";
import { quoteIdent, quoteQualified } from "../../../db/identifiers.ts";
import { withUserSql } from "../../../db/session.ts";
import { deltaFilter } from "../../cdc.ts";
import type { QueryPlan } from "../../plan.ts";
import type { Deltas } from "./delta_sql.ts";
import { blockSources, type DiffPlan, type SourceData } from "./diff_plan.ts";
import { setOperationWriteStatement } from "./set_operations.ts";
import { strategyOf } from "./strategies/strategy.ts";
import { createDeltaTable, sessionDeltaTable, shapeTag } from "./temp_tables.ts";

export interface ApplyOptions {
  plan: QueryPlan;
  target: { schema: string; name: string };
  /** The previous frontier, as pg_snapshot text. */
  frontier: string;
  /** Buffer rows in the delta per source relid, when the caller has counted them already. */
  changes?: Map<number, number>;
  /**
   * Each source's columns and types as text, per relid, when the caller has read them (a refresh has): the delta
   * tables are then kept for the session (temp_tables.ts sessionDeltaTable). Absent: created and dropped per call.
   */
  shapes?: Map<number, string>;
}

export interface ApplyResult {
  /** Rows written (an update counts as one deleted and one inserted row). */
  inserted: number;
  deleted: number;
}

/** Applies the sources' changes since `frontier` to the stream table, in the caller's REPEATABLE READ transaction. */
export async function applyDifferential(tx: Tx, options: ApplyOptions): Promise<ApplyResult> {
  const plan = options.plan.differential as DiffPlan | null;
  if (plan === null || plan.version !== 1) throw new Error("This stream table has no differential plan");
  const target = quoteQualified(options.target);
  // Everything below is generated from the plan: quoted catalog names and the defining query's own clauses (SQL by
  // design, checked at creation); the frontier is always a bind parameter.
  const changed = options.changes !== undefined
    ? plan.sources.flatMap((s, i) => {
      const rows = options.changes!.get(s.relid) ?? 0;
      return rows > 0 ? [{ i, rows }] : [];
    })
    : (await tx.unsafe<{ i: number; rows: number }[]>(
      plan.sources.map((s, i) =>
        // Counted only as far as the raw-delta limit: past it, the exact size does not matter.
        `SELECT ${i} AS i, (SELECT pg_catalog.count(*) FROM (SELECT FROM ${s.buffer} WHERE ${deltaFilter("$1")}
          LIMIT ${RAW_DELTA_LIMIT + 1}) d)::int8 AS rows`
      ).join(" UNION ALL "),
      [options.frontier],
    )).filter((c) => Number(c.rows) > 0);
  if (changed.length === 0) return { inserted: 0, deleted: 0 };
  // The delta SQL evaluates the query's expressions: isolated, so nothing they do to the session outlives them.
  const shapes = options.shapes;
  return await withUserSql(
    tx,
    (sp) => applyChanges(sp, { plan, target, frontier: options.frontier, changed, shapes }),
    { nonVolatile: true },
  );
}

/** Computes and applies the delta of the sources in `changed` (index into plan.sources, buffer rows). */
async function applyChanges(
  tx: Tx,
  input: {
    plan: DiffPlan;
    target: string;
    frontier: string;
    changed: { i: number; rows: number }[];
    shapes: Map<number, string> | undefined;
  },
): Promise<ApplyResult> {
  const { plan, target, changed } = input;
  const result: ApplyResult = { inserted: 0, deleted: 0 };
  const deltas: Deltas = { tables: new Map() };
  const only = changed.length === 1 ? changed[0]! : null;
  // Sums are linear: when a single source changed, is read once per block, and every block affected is algebraic,
  // its raw changes (weight +1 for 'I', -1 for 'D') give the same per-group change as the consolidated delta.
  const linear = only !== null && rawDeltaApplies(plan, Number(only.i));
  const rawChanges = (s: SourceData) =>
    `SELECT ${s.columns.join(", ")}, CASE WHEN action = 'I' THEN 1 ELSE -1 END::int8 AS "__pgt_w"
     FROM ${s.buffer} WHERE action IN ('I', 'D') AND ${deltaFilter("$1")}`;
  // Small raw deltas are read straight from the buffer, with no temporary table to create, fill and analyze.
  const inline = linear && Number(only!.rows) <= RAW_DELTA_LIMIT;
  if (inline) {
    const s = plan.sources[Number(only!.i)]!;
    deltas.tables.set(Number(only!.i), `(${rawChanges(s)}) AS ${quoteIdent(`pgt_raw_${s.relid}`)}`);
  }
  const params = inline ? [input.frontier] : [];
  // No JIT for the delta statements: their costs are estimated over whole sources (a discovery term reads a table
  // "now plus its delta"), which passes jit_above_cost while they run in milliseconds, and compiling them took
  // longer than running them (TPC-H Q18 at scale 0.2 on PostgreSQL 15: 3.7 of 4.3 s in JIT). Undone with the rest of
  // the session by withUserSql's RESET ALL; sent with the first statements, no round trip of its own.
  const noJit = tx.unsafe("SET LOCAL jit = off").execute();
  // Every changed source's delta table is created (when the session lacks it), filled and analyzed in one round trip.
  const filled = await Promise.all((inline ? [] : changed).map(async ({ i }) => {
    const s = plan.sources[Number(i)]!;
    const shape = input.shapes?.get(s.relid);
    const table = shape === undefined
      ? { name: await createDeltaTable(tx, { name: `pgt_delta_${s.relid}`, source: s }), created: null }
      : sessionDeltaTable(tx, { source: s, shape: shapeTag(shape) });
    const key = s.key.join(", ");
    // Consolidated per key (unless linear, above): the row as it was at the frontier (weight -1; the first change of
    // a key, in (change_id, action) order, is a 'D' exactly when the key existed then) and as it is now (+1: the last
    // change is an 'I' exactly when the key exists in the refresh's snapshot, and it is that row, so the source table
    // itself is not read). A key changed a thousand times is two rows.
    const fill = tx.unsafe(
      linear ? `INSERT INTO ${table.name} ${rawChanges(s)}` : `WITH raw AS MATERIALIZED (
         SELECT change_id, action, ${s.columns.join(", ")} FROM ${s.buffer}
         WHERE action IN ('I', 'D') AND ${deltaFilter("$1")})
       INSERT INTO ${table.name}
       SELECT ${s.columns.join(", ")}, -1 FROM (
         SELECT DISTINCT ON (${key}) * FROM raw ORDER BY ${key}, change_id, action) f WHERE action = 'D'
       UNION ALL
       SELECT ${s.columns.join(", ")}, 1 FROM (
         SELECT DISTINCT ON (${key}) * FROM raw ORDER BY ${key}, change_id DESC, action DESC) l WHERE action = 'I'`,
      [input.frontier],
    ).execute();
    // Statistics on the delta let the planner pick index lookups for small deltas (a hash join over a whole
    // dimension table cost more than the ANALYZE) and hash joins for large ones.
    const analyzed = tx.unsafe(`ANALYZE ${table.name}`).execute();
    const [, consolidated] = await Promise.all([table.created, fill, analyzed]);
    return { i: Number(i), name: table.name, rows: consolidated.count };
  }));
  await noJit;
  for (const f of filled) if (f.rows > 0) deltas.tables.set(f.i, f.name);
  // A set operation other than UNION ALL is one statement over all its branches (set_operations.ts).
  const statements = plan.setOperation
    ? (deltas.tables.size > 0 ? [setOperationWriteStatement(plan, { target, deltas })] : [])
    : plan.blocks.filter((block) => blockSources(block).some((s) => deltas.tables.has(s)))
      .map((block) => strategyOf(block).writeStatement(block, plan, { target, deltas }));
  for (const statement of statements) {
    const [row] = await tx.unsafe<{ inserted: number; updated: number; deleted: number }[]>(statement, params);
    // An update counts as a deleted and an inserted row, so that inserted - deleted is the change in row count.
    result.inserted += Number(row!.inserted) + Number(row!.updated);
    result.deleted += Number(row!.deleted) + Number(row!.updated);
  }
  return result;
}

/**
 * Above this many buffer rows, a delta goes through a temporary table with statistics even where raw would do: the
 * planner's guess at a buffer scan's size is small, and past about a thousand rows its nested loops cost more than
 * the table (the join + GROUP BY bench at 1,000 changed rows: 22 ms raw, 17 ms through the table).
 */
const RAW_DELTA_LIMIT = 1_000;

/** True when every block reading source `i` is algebraic and reads it once (no self-join). */
function rawDeltaApplies(plan: DiffPlan, i: number): boolean {
  return plan.blocks.every((b) => {
    const reads = b.refs.filter((r) => r.source === i).length;
    if (b.strategy === "partition" && blockSources(b).includes(i)) return false;
    return reads === 0 || (reads === 1 && b.strategy === "algebraic");
  });
}
