/**
 * The partition recompute: outer joins, subqueries in expressions, window functions, DISTINCT ON and top-k
 * (partition_planning.ts chooses the partition expressions P). A refresh finds the partitions its delta touches (P
 * over the block's delta terms, and over the outer rows a changed subquery row correlates with), recomputes the block
 * restricted to them, deletes their stored rows that are gone and writes those that differ. Each stored row keeps its
 * partition's hash in `__pgt_part` (indexed), so a partition's rows are found without recomputing it.
 *
 * Discovery only has to find a superset of the touched partitions (recomputing an untouched one rewrites nothing),
 * so it may drop WHERE conjuncts, read a changed table as its rows now plus its delta's rows (a superset of both its
 * states), and treat a subquery as true whenever a changed row of its sources passes its WHERE.
 */
import { quoteIdent } from "../../../../db/identifiers.ts";
import type { BlockData, DiffPlan, PartitionData, RefData, Segment, WherePiece } from "../diff_plan.ts";
import { PART, ROW_ID } from "../diff_plan.ts";
import {
  cast,
  COUNTS,
  type Deltas,
  fromWhere,
  groupRowId,
  keyRowId,
  oldFrom,
  oldState,
  plainFrom,
} from "../delta_sql.ts";
import type { Strategy } from "./strategy.ts";

export const partition: Strategy = {
  fullSelect: (block, plan) => blockSelect(block, plan, null),
  changeQueries: (block, plan, deltas) => {
    const k = touchedPartitions(block, plan, deltas);
    return [k, recomputed(block, plan, `(${k})`)];
  },
  writeStatement: (block, plan, { target, deltas }) => applyPartition(plan, block, target, deltas),
};

/** The hash of a row's partition (0 when the whole block is one partition). */
function partHash(p: PartitionData): string {
  return p.keys.length === 0
    ? "0::int8"
    : `pg_catalog.hash_record_extended(ROW(${p.keys.map((k) => `(${k})`).join(", ")}), 0)`;
}

function rowIdOfBlock(block: BlockData): string {
  const p = block.partition!;
  if (p.rowId === "distinct_on") return groupRowId(block, p.distinctOn!);
  if (p.rowId === "group") return groupRowId(block, block.groupKeys);
  return keyRowId(block);
}

/**
 * The block's query with row id and partition hash after its outputs, optionally restricted to some partitions (in
 * WHERE: before grouping, windows, DISTINCT ON and LIMIT, so a partition is recomputed whole). Outputs carry the
 * query's column names, so ORDER BY and DISTINCT ON read an output name as they did in the defining query.
 */
function blockSelect(block: BlockData, plan: DiffPlan, restrict: string | null, where = block.where): string {
  const p = block.partition!;
  const distinct = p.distinctOn !== null
    ? `DISTINCT ON (${p.distinctOn.join(", ")}) `
    : (block.distinct ? "DISTINCT " : "");
  const outputs = block.targets.map((t, i) => `${t} AS ${plan.columns[i]}`);
  return `SELECT ${distinct}${outputs.join(", ")}, ${rowIdOfBlock(block)} AS ${ROW_ID}, ${partHash(p)} AS ${PART} ` +
    fromWhere(plainFrom(block, plan), where, restrict) +
    (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
    (block.having !== null ? ` HAVING ${block.having}` : "") +
    (p.tail !== null ? ` ${p.tail}` : "");
}

/** FROM text with each reference filled by `fill`. */
function render(from: Segment[], fill: (i: number) => string): string {
  return from.map((s) => (typeof s === "number" ? fill(s) : s)).join("");
}

/**
 * A reference in a telescoped discovery term for reference `k`: its delta (with its weight, to test that it
 * participates), before k a superset of its two states (now plus the delta's rows), after k the table now.
 */
function termRef(plan: DiffPlan, deltas: Deltas, args: { refs: RefData[]; i: number; k: number }): string {
  const r = args.refs[args.i]!;
  const src = plan.sources[r.source]!;
  const d = deltas.tables.get(r.source);
  const cols = src.columns.join(", ");
  if (args.i === args.k) {
    return `(SELECT ${cols}, "__pgt_w" AS ${quoteIdent(`__pgt_w_${args.i}`)} FROM ${d})${r.aliasSuffix}`;
  }
  if (args.i < args.k && d !== undefined) {
    return `(SELECT ${cols} FROM ${src.table} UNION ALL SELECT ${cols} FROM ${d})${r.aliasSuffix}`;
  }
  return src.table + r.aliasSuffix;
}

/**
 * Discovery terms of the block's own references, selecting `sel`. A changed row must participate, not be
 * NULL-extended (an outer join whose nullable side is the delta then reduces to an inner join).
 */
function ownTerms(block: BlockData, plan: DiffPlan, deltas: Deltas, sel: string): string[] {
  const terms: string[] = [];
  for (const [k, ref] of block.refs.entries()) {
    if (!deltas.tables.has(ref.source)) continue;
    const from = render(block.from, (i) => termRef(plan, deltas, { refs: block.refs, i, k }));
    terms.push(
      `SELECT ${sel} ${fromWhere(from, block.partition!.discoveryWhere, `${quoteIdent(`__pgt_w_${k}`)} IS NOT NULL`)}`,
    );
  }
  return terms;
}

/**
 * Top-k: its one partition when some changed row (old or new version, as discovery reads it) can change the stored
 * rows, else nothing (the refresh then recomputes nothing). A changed row can when its row id is stored (its old
 * version is a stored row), when fewer than LIMIT rows are stored (any qualifying row may enter), or when it sorts
 * before the last stored row or ties it (in ORDER BY's own directions, NULLs placement and collation). With OFFSET the
 * same test is conservative: a change before the window shifts it, and sorts before its last row.
 */
function topkTouched(block: BlockData, plan: DiffPlan, deltas: Deltas, target: string): string {
  const t = block.partition!.topk!;
  const s = (j: number) => `"s${j}"`;
  // A sort item on an expression (COLLATE) cannot read an output alias: `x."s0"` and `st.<column>` name inputs.
  const sortOf = (o: (typeof t.order)[number], expr: string, reverse: boolean) =>
    `${expr}${o.collate === null ? "" : ` COLLATE ${o.collate}`} ${o.desc !== reverse ? "DESC" : "ASC"} NULLS ${
      o.nullsFirst !== reverse ? "FIRST" : "LAST"
    }`;
  const sel = [
    ...t.order.map((o, j) => `${cast(plan, o.column, block.targets[o.column]!)} AS ${s(j)}`),
    `${rowIdOfBlock(block)} AS rid`,
  ].join(", ");
  const terms = ownTerms(block, plan, deltas, sel);
  if (terms.length === 0) return "SELECT 0::int8 AS part WHERE false";
  const sortCols = t.order.map((_, j) => s(j)).join(", ");
  const stored = t.order.map((o, j) => `st.${plan.columns[o.column]} AS ${s(j)}`).join(", ");
  // The last stored row: the stored rows in reverse order, first one. Candidates sort before it on a tie (b DESC).
  const last = `SELECT ${stored} FROM ${target} st ORDER BY ${
    t.order.map((o) => sortOf(o, `st.${plan.columns[o.column]}`, true)).join(", ")
  } LIMIT 1`;
  const first = `SELECT x.b FROM (SELECT ${sortCols}, 0 AS b FROM (${last}) l UNION ALL SELECT ${sortCols}, 1 FROM c) x
    ORDER BY ${t.order.map((o, j) => sortOf(o, `x.${s(j)}`, false)).join(", ")}, x.b DESC LIMIT 1`;
  // The count is a planned integer constant, not request text.
  return `SELECT 0::int8 AS part WHERE EXISTS (
    WITH c AS MATERIALIZED (${terms.join("\nUNION ALL\n")})
    SELECT 1 WHERE EXISTS (SELECT 1 FROM c JOIN ${target} st ON st.${ROW_ID} = c.rid)
      OR (EXISTS (SELECT 1 FROM c) AND (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM ${target} LIMIT ${t.count}) n) < ${t.count})
      OR (${first}) = 1)`;
}

/** Hashes of the partitions the delta touches (a superset of those whose rows change), and their key values. */
function touchedPartitions(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const p = block.partition!;
  if (p.keys.length === 0) return "SELECT 0::int8 AS part";
  const sel = `${partHash(p)} AS part` + p.keys.map((k, i) => `, ${k} AS "p${i}"`).join("");
  const terms = ownTerms(block, plan, deltas, sel);
  // A changed row of a subquery's sources: the outer rows it may correlate with, now (outer rows that changed are
  // found above).
  const outer = plainFrom(block, plan);
  for (const s of p.sublinks) {
    for (const [k, ref] of s.refs.entries()) {
      if (!deltas.tables.has(ref.source)) continue;
      const from = render(s.from, (i) => termRef(plan, deltas, { refs: s.refs, i, k }));
      const exists = `EXISTS (SELECT 1 FROM ${from}${s.where === null ? "" : ` WHERE ${s.where}`})`;
      terms.push(`SELECT ${sel} ${fromWhere(outer, p.discoveryWhere, exists)}`);
    }
  }
  if (p.touchAll.some((i) => deltas.tables.has(i))) {
    terms.push(`SELECT ${sel} ${fromWhere(outer, p.discoveryWhere)}`);
  }
  if (terms.length === 0) return `SELECT ${sel} FROM ${outer} WHERE false`;
  return `SELECT DISTINCT * FROM (${terms.join("\nUNION ALL\n")}) d`;
}

/**
 * The change of an algebraic block over rows (PartitionData.oldWhere): the rows its delta touches (by their keys), as
 * they are now with weight +1 and as they were at the frontier (every table, its subqueries' too, in its state then)
 * with weight -1. One term; `select` gets the weight and returns the select list, as for the delta terms.
 */
export function rowChangeTerm(block: BlockData, plan: DiffPlan, deltas: Deltas, select: (w: string) => string): string {
  const p = block.partition!;
  const old = p.oldWhere!;
  const values = p.keys.map((_, i) => `k."p${i}"`).join(", ");
  const touched = `(${p.keys.join(", ")}) IN (SELECT ${values} FROM "__pgt_rows" k)`;
  // The WHERE's own subqueries narrowed to the touched keys where they can be, read now and at the frontier.
  const where = (fill: (ref: number) => string, guarded: boolean) =>
    block.where === null ? null : renderWhere(old.where, `"__pgt_rows"`, fill, guarded);
  const nowWhere = where((i) => plan.sources[old.refs[i]!.source]!.table, false);
  const oldWhere = where((i) => oldState(plan, deltas, old.refs[i]!), true);
  // Each reference never NULL-extended is restricted by its own keys inside its state at the frontier (else the
  // state of a whole table is built before the touched rows are picked from it: TPC-H Q17 took 25 s).
  const own = new Map<number, string>();
  let at = 0;
  for (const [i, r] of block.refs.entries()) {
    if (p.nullable.includes(i)) continue;
    const cols = r.key.map((_, j) => `k."p${at + j}"`).join(", ");
    own.set(i, `(${r.key.join(", ")}) IN (SELECT ${cols} FROM "__pgt_rows" k)`);
    at += r.key.length;
  }
  const oldRows = oldFrom(block, plan, deltas, (i) => own.get(i) ?? "");
  return `WITH "__pgt_rows" AS MATERIALIZED (${touchedPartitions(block, plan, deltas)})
    SELECT ${select("1::int8")} ${fromWhere(plainFrom(block, plan), nowWhere, touched)}
    UNION ALL
    SELECT ${select("-1::int8")} ${fromWhere(oldRows, oldWhere, touched)}`;
}

/**
 * The current rows of the partitions `touched` (a relation with columns `part`, p0..) lists: c0.., rid, part.
 *
 * Partitions are selected by their key values, a semi-join PostgreSQL can serve by an index on the keys (selecting
 * by hash scanned the block's whole FROM: a GROUP BY over a join recomputed like FULL). Keys that may be NULL (group,
 * window, DISTINCT ON keys; byValue means primary-key columns) never match by `=`: the partitions with a NULL key are
 * recomputed by hash in a second branch, limited to rows with a NULL key (the two are disjoint) and skipped outright
 * (an uncorrelated EXISTS: a one-time filter) when no touched partition has one. Like row ids, partitions are told
 * apart by a 64-bit hash when their stored rows are deleted; the design takes such a collision as impossible.
 */
function recomputed(block: BlockData, plan: DiffPlan, touched: string): string {
  const p = block.partition!;
  const names = [...plan.columns.map((_, i) => `"c${i}"`), "rid", "part"];
  const cols = plan.columns.map((_, i) => `${cast(plan, i, `q."c${i}"`)} AS "c${i}"`);
  const outer = (inner: string) => `SELECT ${cols.join(", ")}, q.rid, q.part FROM (${inner}) q(${names.join(", ")})`;
  // Top-k: its one partition only when the boundary test found it (none: the recompute reads nothing).
  if (p.keys.length === 0) {
    return outer(blockSelect(block, plan, p.topk !== undefined ? `EXISTS (SELECT 1 FROM ${touched} k)` : null));
  }
  const values = p.keys.map((_, i) => `k."p${i}"`);
  const byValue = `(${p.keys.join(", ")}) IN (SELECT ${values.join(", ")} FROM ${touched} k`;
  const where = narrowed(p, touched) ?? block.where;
  if (p.byValue) return outer(blockSelect(block, plan, `${byValue})`, where));
  const nullValue = values.map((v) => `${v} IS NULL`).join(" OR ");
  const nullKey = p.keys.map((key) => `(${key}) IS NULL`).join(" OR ");
  const valued = blockSelect(block, plan, `${byValue} WHERE NOT (${nullValue}))`, where);
  const nulled = blockSelect(
    block,
    plan,
    `EXISTS (SELECT 1 FROM ${touched} k WHERE ${nullValue}) AND (${nullKey}) AND ` +
      `${partHash(p)} IN (SELECT part FROM ${touched} k WHERE ${nullValue})`,
  );
  return outer(`(${valued}) UNION ALL (${nulled})`);
}

/** The block's WHERE with its narrowable subqueries limited to the touched values of their key, or null. */
function narrowed(p: PartitionData, touched: string): string | null {
  return p.narrowWhere === undefined ? null : renderWhere(p.narrowWhere, touched, () => "");
}

/**
 * WHERE pieces as SQL: narrowed subqueries read key values from `touched`, each table slot is `fill`'s; `guarded`:
 * each conjunct holding a subquery as `(conjunct) IS TRUE`, the same in a WHERE's top-level AND, but out of reach of
 * PostgreSQL's pulling EXISTS and IN up into joins, so the subquery stays a correlated SubPlan whose parameters reach
 * into the tables' states at the frontier (subqueries of their own, which a join could not look up by index).
 */
function renderWhere(pieces: WherePiece[], touched: string, fill: (ref: number) => string, guarded = false): string {
  return pieces.map((piece) => {
    if (typeof piece === "string") return piece;
    if (typeof piece === "number") return fill(piece);
    if (piece.slot === "guard") return guarded ? "(" : "";
    if (piece.slot === "end_guard") return guarded ? ") IS TRUE" : "";
    if (piece.slot === "open") return "(";
    const cond = `${piece.column} IN (SELECT k."p${piece.key}" FROM ${touched} k)`;
    return piece.slot === "and" ? `) AND ${cond}` : ` WHERE ${cond}`;
  }).join("");
}

/** One statement: touched partitions, their rows recomputed, stored rows gone deleted, the others written if changed. */
function applyPartition(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  const all = [...plan.columns, PART];
  const k = block.partition!.topk !== undefined
    ? topkTouched(block, plan, deltas, target)
    : touchedPartitions(block, plan, deltas);
  return `WITH k AS MATERIALIZED (${k}),
    n AS MATERIALIZED (${recomputed(block, plan, "k")}),
    del AS (
      DELETE FROM ${target} st WHERE st.${PART} IN (SELECT part FROM k)
        AND NOT EXISTS (SELECT 1 FROM n WHERE n.rid = st.${ROW_ID})
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${[...plan.columns, ROW_ID, PART].join(", ")})
      SELECT ${[...cols, "rid", "part"].join(", ")} FROM n
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${all.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      WHERE ROW(${all.map((c) => `st.${c}`).join(", ")})::text IS DISTINCT FROM
        ROW(${all.map((c) => `EXCLUDED.${c}`).join(", ")})::text
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
}
