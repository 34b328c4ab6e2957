/**
 * Top-k boundary planning (docs/differential.md, "Top-k"): for an ungrouped top-k block whose ORDER BY reads only
 * output columns and whose LIMIT/OFFSET are integer constants, the plan keeps what a refresh needs to decide, in SQL,
 * whether any changed row can reach the stored rows (strategies/partition.ts, topkTouched). Anything else keeps the
 * recompute on every change: the function returns the reason, which the plan notes show.
 */
import type { TopkData } from "./diff_plan.ts";
import { child, list, names, type Node, shape } from "./query_reading.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import type { Sql, Tx } from "../../../db/pool.ts";

export interface TopkInput {
  /** The whole query (a top-k block is never a branch): its outputs are the block's. */
  query: string;
  leaf: Node;
  targetNodes: (Node | null)[];
  /** Output column names and types, in order. */
  outputNames: string[];
  outputTypes: string[];
  /** Why the block cannot skip (grouped, outer join, subquery, window, DISTINCT), or null. */
  blocker: string | null;
}

/** The boundary test's data, or a reason why a refresh with changes must recompute the top-k. */
export async function planTopk(sql: Sql | Tx, args: TopkInput): Promise<TopkData | string> {
  const { leaf } = args;
  if (args.blocker !== null) return args.blocker;
  const count = intConst(leaf["limitCount"]);
  const offset = leaf["limitOffset"] === undefined ? 0 : intConst(leaf["limitOffset"]);
  if (count === null || offset === null) return "LIMIT or OFFSET is not an integer constant";
  const order: TopkData["order"] = [];
  for (const item of list(leaf, "sortClause")) {
    const sortBy = child(item, "SortBy");
    if (sortBy === undefined || sortBy["sortby_dir"] === "SORTBY_USING") return "ORDER BY ... USING";
    let node = child(sortBy, "node");
    let collate: string | null = null;
    const coll = child(node, "CollateClause");
    if (coll !== undefined) {
      collate = names(list(coll, "collname")).map(quoteIdent).join(".");
      node = child(coll, "arg");
      if (child(node, "A_Const") !== undefined) return "ORDER BY a constant";
    }
    const column = outputColumn(args, node, coll === undefined);
    if (column === null) return "ORDER BY reads an expression that is not an output column";
    const desc = sortBy["sortby_dir"] === "SORTBY_DESC";
    const nulls = sortBy["sortby_nulls"];
    // PostgreSQL's default: NULLs sort as larger than any value, so first in DESC.
    const nullsFirst = nulls === "SORTBY_NULLS_FIRST" ? true : nulls === "SORTBY_NULLS_LAST" ? false : desc;
    order.push({ column, desc, nullsFirst, collate });
  }
  if (order.length === 0) return "LIMIT without ORDER BY";
  // The stored columns have their type's default collation; a column the query sorts by another (a source column's
  // own COLLATE) is compared under that one, named explicitly on both sides of the test.
  const colls = await outputCollations(sql, {
    query: args.query,
    types: args.outputTypes,
    columns: order.map((o) => o.column),
  });
  for (const o of order) {
    const c = colls.get(o.column);
    if (o.collate === null && c !== undefined && c !== '"default"') o.collate = c;
  }
  return { count, offset, withTies: leaf["limitOption"] === "LIMIT_OPTION_WITH_TIES", order };
}

/** An integer constant's value (`{A_Const: {ival: {}}}` is 0), or null. */
function intConst(node: unknown): number | null {
  const c = child(node, "A_Const");
  if (c === undefined || c["ival"] === undefined) return null;
  return Number(child(c, "ival")!["ival"] ?? 0);
}

/**
 * The output column an ORDER BY item reads, as PostgreSQL resolves it: a position, a bare output name, else an
 * expression equal (by parse shape) to an output expression.
 */
function outputColumn(args: TopkInput, node: Node | undefined, ordinalAllowed: boolean): number | null {
  const ordinal = child(child(node, "A_Const"), "ival");
  if (ordinal !== undefined) {
    const i = Number(ordinal["ival"] ?? 0) - 1;
    return ordinalAllowed && i >= 0 && i < args.outputNames.length ? i : null;
  }
  const fields = names(list(child(node, "ColumnRef"), "fields"));
  if (fields.length === 1) {
    const byName = args.outputNames.flatMap((n, i) => (n === fields[0] ? [i] : []));
    if (byName.length === 1) return byName[0]!;
    if (byName.length > 1) return null;
  }
  const s = shape(node);
  const i = args.targetNodes.findIndex((t) => t !== null && shape(t) === s);
  return i >= 0 ? i : null;
}

/**
 * The collation (quoted, as pg_collation_for names it) of each output in `columns` whose type is collatable; other
 * outputs are absent.
 */
async function outputCollations(
  sql: Sql | Tx,
  args: { query: string; types: string[]; columns: number[] },
): Promise<Map<number, string>> {
  const collatable: number[] = [];
  for (const i of new Set(args.columns)) {
    const [t] = await sql<{ c: boolean }[]>`
      SELECT typcollation <> 0 AS c FROM pg_catalog.pg_type WHERE oid = ${args.types[i]!}::regtype`;
    if (t?.c === true) collatable.push(i);
  }
  if (collatable.length === 0) return new Map();
  const cols = args.types.map((_, i) => `"c${i}"`);
  // The defining query is SQL by design (checked when the stream table was created); LIMIT 0 reads no row, and the
  // outer join yields one all-NULL row whose expressions still carry the outputs' collations.
  const [row] = await sql.unsafe<Record<string, string | null>[]>(
    `SELECT ${collatable.map((i) => `pg_catalog.pg_collation_for(q.${cols[i]}) AS ${cols[i]}`).join(", ")}
     FROM (SELECT 1) one LEFT JOIN (SELECT * FROM (${args.query}) q0 LIMIT 0) q(${cols.join(", ")}) ON true`,
  );
  return new Map(collatable.flatMap((i) => (row?.[`c${i}`] ? [[i, row[`c${i}`]!] as const] : [])));
}
