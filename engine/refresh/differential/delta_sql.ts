/**
 * Writing the delta SQL: the pieces every strategy assembles its statements from. Each is a pure function of the
 * plan and of `Deltas` (which relation holds each changed source's weighted rows), so the same SQL serves a
 * refresh, which fills temporary tables first (apply.ts), and the plan-time probe; nothing here runs a statement.
 *
 * The delta of an inner join of n references telescopes: sum over k of old_1 .. old_{k-1} x delta_k x new_{k+1} ..
 * new_n, each row weighted by the product of its weights; "new" is the table at the refresh snapshot, "old" is new
 * minus the delta (signed weights).
 */
import { quoteIdent } from "../../../db/identifiers.ts";
import type { BlockData, DiffPlan, RefData } from "./diff_plan.ts";

/** Which relation holds each changed source's delta: its columns plus the weight `__pgt_w` (+1 or -1). */
export interface Deltas {
  /** Source index -> relation text (a temp table, or a subquery with its alias). */
  tables: Map<number, string>;
}

/** A row id as it is, or salted with the UNION ALL branch so branches never share one. */
export function rowIdOf(block: BlockData, inner: string): string {
  return block.branch === 0 ? inner : `pg_catalog.hash_record_extended(ROW(${block.branch}, ${inner}), 0)`;
}

/** The row id of a group: a hash of its key values (0 for a global aggregate). */
export function groupRowId(block: BlockData, keys: string[]): string {
  const inner = keys.length === 0
    ? "0::int8"
    : `pg_catalog.hash_record_extended(ROW(${keys.map((k) => `(${k})`).join(", ")}), 0)`;
  return rowIdOf(block, inner);
}

/** The row id of a joined row: a hash of every reference's primary key. */
export function keyRowId(block: BlockData): string {
  return rowIdOf(block, `pg_catalog.hash_record_extended(ROW(${block.refs.flatMap((r) => r.key).join(", ")}), 0)`);
}

/** The block's FROM text with each table reference filled in by `fill`. */
export function renderFrom(block: BlockData, fill: (ref: number) => string): string {
  return block.from.map((s) => (typeof s === "number" ? fill(s) : s)).join("");
}

/**
 * A table reference as its source was at the frontier: a changed source is its rows now minus the keys the delta
 * inserted or updated (weight +1: the row as it is now), plus the delta's old rows (weight -1); `restrict` is applied
 * inside both parts.
 */
export function oldState(plan: DiffPlan, deltas: Deltas, r: RefData, restrict = ""): string {
  const src = plan.sources[r.source]!;
  const d = deltas.tables.get(r.source);
  if (d === undefined) return src.table + r.aliasSuffix;
  const cols = src.columns.join(", ");
  // Both parts carry the reference's own name, so that a restriction reading only its columns applies inside.
  const same = src.key.map((k) => `"__pgt_d".${k} = ${r.exposed}.${k}`).join(" AND ");
  const extra = restrict === "" ? "" : ` AND ${restrict}`;
  return `(SELECT ${cols} FROM ${src.table} AS ${r.exposed} WHERE NOT EXISTS (SELECT 1 FROM ${d} AS "__pgt_d" ` +
    `WHERE "__pgt_d"."__pgt_w" > 0 AND ${same})${extra} UNION ALL SELECT ${cols} FROM ${d} AS ${r.exposed} ` +
    `WHERE "__pgt_w" < 0${extra})${r.aliasSuffix}`;
}

/**
 * The block's FROM over its sources as they were at the frontier; `restrictOf` gives a restriction to apply inside a
 * reference (reading only its columns), "" for none.
 */
export function oldFrom(
  block: BlockData,
  plan: DiffPlan,
  deltas: Deltas,
  restrictOf: (ref: number) => string = () => "",
): string {
  return renderFrom(block, (i) => oldState(plan, deltas, block.refs[i]!, restrictOf(i)));
}

/** The block's FROM text over the tables themselves. */
export function plainFrom(block: BlockData, plan: DiffPlan): string {
  return renderFrom(block, (i) => plan.sources[block.refs[i]!.source]!.table);
}

/** `FROM ... WHERE ...` with the block's WHERE and an optional extra condition. */
export function fromWhere(from: string, where: string | null, extra: string | null = null): string {
  const conds = [where === null ? null : `(${where})`, extra].filter((c) => c !== null);
  return `FROM ${from}${conds.length > 0 ? ` WHERE ${conds.join(" AND ")}` : ""}`;
}

/**
 * The delta of a block's FROM/WHERE as telescoped terms (to be joined by UNION ALL), one per reference whose source
 * changed; `select` gets the term's weight expression and returns its select list.
 */
export function deltaTerms(
  block: BlockData,
  plan: DiffPlan,
  deltas: Deltas,
  select: (weight: string) => string,
): string[] {
  const terms: string[] = [];
  for (const [k, ref] of block.refs.entries()) {
    const dk = deltas.tables.get(ref.source);
    if (dk === undefined) continue;
    const weights: string[] = [];
    const from = renderFrom(block, (i) => {
      const r = block.refs[i]!;
      const src = plan.sources[r.source]!;
      const d = deltas.tables.get(r.source);
      const w = quoteIdent(`__pgt_w_${i}`);
      const cols = src.columns.join(", ");
      if (i === k) {
        weights.push(w);
        return `(SELECT ${cols}, "__pgt_w" AS ${w} FROM ${d})${r.aliasSuffix}`;
      }
      if (i < k && d !== undefined) {
        weights.push(w);
        return `(SELECT ${cols}, 1::int8 AS ${w} FROM ${src.table} UNION ALL ` +
          `SELECT ${cols}, -"__pgt_w" FROM ${d})${r.aliasSuffix}`;
      }
      return src.table + r.aliasSuffix;
    });
    terms.push(`SELECT ${select(weights.join(" * "))} ${fromWhere(from, block.where)}`);
  }
  return terms;
}

/** Output expression `i` cast to its column's type, so every branch and term agrees. */
export function cast(plan: DiffPlan, i: number, expr: string): string {
  return `CAST((${expr}) AS ${plan.types[i]})`;
}

/** Counts of one write statement's data-modifying parts; xmax = 0 tells a fresh insert from an ON CONFLICT update. */
export const COUNTS = `SELECT (SELECT pg_catalog.count(*) FROM del) AS deleted,
  (SELECT pg_catalog.count(*) FROM up WHERE fresh) AS inserted, (SELECT pg_catalog.count(*) FROM up WHERE NOT fresh) AS updated`;
