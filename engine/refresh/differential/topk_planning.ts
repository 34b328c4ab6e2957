/**
 * Top-k boundary planning (docs/differential.md, "Top-k"): for an ungrouped top-k block whose ORDER BY reads only
 * output columns and whose LIMIT/OFFSET are integer constants, the plan keeps what a refresh needs to decide, in SQL,
 * whether any changed row can reach the stored rows (strategies/partition.ts, topkTouched). Anything else keeps the
 * recompute on every change: the function returns the reason, which the plan notes show.
 */
import type { TopkData } from "./diff_plan.ts";
import { child, list, names, type Node, shape } from "./query_reading.ts";
import { quoteIdent } from "../../../db/identifiers.ts";

export interface TopkInput {
  leaf: Node;
  targetNodes: (Node | null)[];
  /** Output column names, in order. */
  outputNames: string[];
  /** Why the block cannot skip (grouped, outer join, subquery, window, DISTINCT), or null. */
  blocker: string | null;
}

/** The boundary test's data, or a reason why a refresh with changes must recompute the top-k. */
export function planTopk(args: TopkInput): TopkData | string {
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
