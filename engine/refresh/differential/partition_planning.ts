/**
 * Planning a partition recompute (strategies/partition.ts) for a block with outer joins, subqueries in expressions,
 * window functions, DISTINCT ON or top-k: its partition expressions P, the references on the nullable side of an
 * outer join, the WHERE conjuncts discovery may evaluate, and the subqueries whose sources' changes touch partitions.
 * Choosing P (docs/differential.md): top-k is one partition; windows partition by the PARTITION BY keys every window
 * shares; DISTINCT ON by its keys; a grouped block by its group keys; otherwise the keys of the references that are
 * never NULL-extended (a FULL JOIN: the coalesce of an equality between its sides). Over an outer join, P must read
 * only those core references (a touched core row then names its partition whatever its NULL-extended side did),
 * else the block is one partition.
 */
import type { Sql, Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import type { BlockInput, Clauses, RefColumns } from "./block_planning.ts";
import { type BlockData, type PartitionData, type SublinkData, type TopkData, unsupported } from "./diff_plan.ts";
import { child, list, names, type Node, type QueryText, shape, walk } from "./query_reading.ts";
import { columnRefs, conjuncts, expressionRefs, type NarrowSite, planSublink } from "./sublink_planning.ts";
import { wherePieces } from "./row_planning.ts";
import { planTopk } from "./topk_planning.ts";

export interface PartitionInput {
  text: QueryText;
  leaf: Node;
  input: BlockInput;
  /** The block as planned so far (refs, where, targets, group keys). */
  block: BlockData;
  rangeVars: Node[];
  refColumns: RefColumns[];
  clauses: Clauses;
  targetNodes: (Node | null)[];
  groupNodes: unknown[];
  aggregated: boolean;
}

/** The partition recompute of a block that needs one, or null when the block has none of its constructs. */
export async function planPartition(
  sql: Sql | Tx,
  args: PartitionInput,
): Promise<{ partition: PartitionData; sites: NarrowSite[] } | null> {
  const { leaf, block, input } = args;
  const fromClause = list(leaf, "fromClause");
  const joins: string[] = [];
  walk(fromClause, (kind, node) => {
    if (kind === "JoinExpr" && node["jointype"] !== "JOIN_INNER") joins.push(String(node["jointype"]));
  });
  const sublinks = topSublinks(leaf);
  const windows = windowCalls(leaf);
  const distinctOn = ((leaf["distinctClause"] as unknown[] | undefined) ?? []).some((d) =>
    d !== null && Object.keys(d as object).length > 0
  );
  const limited = leaf["limitCount"] !== undefined || leaf["limitOffset"] !== undefined;
  const constructs = [
    ...(joins.length > 0 ? ["outer join"] : []),
    ...(sublinks.length > 0 ? ["subquery in an expression"] : []),
    ...(windows.length > 0 ? ["window function"] : []),
    ...(distinctOn ? ["DISTINCT ON"] : []),
    ...(limited ? ["LIMIT/OFFSET"] : []),
  ];
  if (constructs.length === 0) return null;
  // A UNION ALL's storage is shared by its branches and has no room for a partition column.
  if (input.branch !== 0) unsupported(`${constructs[0]} in a UNION ALL branch`);
  if (windows.length > 0 && block.distinct) unsupported("DISTINCT together with window functions");
  if (distinctOn && args.aggregated) unsupported("DISTINCT ON together with aggregates");
  if (distinctOn && windows.length > 0) unsupported("DISTINCT ON together with window functions");

  const notes: string[] = [];
  const nullable = nullableRefs(fromClause, args.rangeVars);
  const refsOf = (expr: string) => expressionRefs(expr, args.refColumns);
  const full = joins.includes("JOIN_FULL");
  const distinctKeys = distinctOn ? distinctOnKeys(args) : null;

  let keys: string[];
  let byValue = false;
  let topk: TopkData | string = "";
  if (limited) {
    keys = [];
    topk = await planTopk(sql, {
      query: args.text.query,
      leaf,
      targetNodes: args.targetNodes,
      outputNames: input.description.columns.map((c) => c.name),
      outputTypes: input.description.columns.map((c) => c.type),
      blocker: topkBlocker(constructs, args.aggregated || block.distinct),
    });
    notes.push(
      typeof topk === "string"
        ? `top-k (ORDER BY ... LIMIT/OFFSET): a refresh with changes recomputes the whole result (${topk})`
        : "top-k (ORDER BY ... LIMIT/OFFSET): a refresh recomputes the whole result only when a change reaches its rows or sorts before its last row",
    );
  } else if (windows.length > 0) {
    keys = windowKeys(args, windows);
    if (keys.length === 0) notes.push("whole-table window: a refresh with changes recomputes the whole result");
  } else if (distinctKeys !== null) {
    keys = distinctKeys;
  } else if (args.aggregated || block.distinct) {
    keys = block.groupKeys;
  } else if (full) {
    keys = [fullJoinKey(args)];
  } else {
    keys = block.refs.flatMap((r, i) => (nullable.has(i) ? [] : r.key));
    byValue = true;
  }
  keys = keys.filter((k) => !refsOf(k).sublink);
  const coreOnly = keys.every((k) => [...refsOf(k).refs].every((r) => !nullable.has(r)));
  if (nullable.size > 0 && !coreOnly && !(full && !args.aggregated && windows.length === 0 && !distinctOn)) {
    keys = [];
    notes.push("partition keys read the nullable side of an outer join: a refresh recomputes the whole result");
  }

  const touchAll = new Set<number>();
  const sublinkData: SublinkData[] = [];
  const positive = whereConjuncts(leaf);
  const narrowable: NarrowSite[] = [];
  for (const s of sublinks) {
    const data = await planSublink(sql, { args, sublink: s, touchAll, positive: positive.has(s), narrowable });
    if (data !== null) sublinkData.push(data);
  }
  if (touchAll.size > 0) {
    const tables = [...touchAll].map((i) => input.sources[i]!.table).join(", ");
    notes.push(`a change to ${tables} (read by a nested or unreadable subquery) recomputes every partition`);
  }

  const discovery = conjuncts(block.where).filter((c) => {
    const r = refsOf(c);
    return !r.sublink && [...r.refs].every((i) => !nullable.has(i));
  });
  const partition: PartitionData = {
    keys,
    byValue: byValue && keys.length > 0,
    rowId: distinctKeys !== null ? "distinct_on" : (args.aggregated || block.distinct ? "group" : "refs"),
    distinctOn: distinctKeys,
    tail: limited || distinctOn ? tail(args) : null,
    nullable: [...nullable].sort((a, b) => a - b),
    discoveryWhere: discovery.length === 0 ? null : discovery.map((c) => `(${c})`).join(" AND "),
    sublinks: sublinkData,
    touchAll: [...touchAll].sort((a, b) => a - b),
    notes,
    ...(typeof topk === "string" || touchAll.size > 0 ? {} : { topk }),
  };
  const narrowWhere = wherePieces(args, { sites: narrowable, keys, rangeVars: [], guards: false });
  if (narrowWhere !== null && narrowWhere.some((p) => typeof p === "object")) partition.narrowWhere = narrowWhere;
  return { partition, sites: narrowable };
}

/** Why a top-k block cannot test its boundary (exactly and cheaply), or null. */
function topkBlocker(constructs: string[], grouped: boolean): string | null {
  if (grouped) return "grouped or DISTINCT";
  const other = constructs.filter((c) => c !== "LIMIT/OFFSET");
  return other.length > 0 ? `top-k over a ${other[0]}` : null;
}

/** SubLinks of the block itself (select list, WHERE, HAVING), not those nested inside another subquery. */
function topSublinks(leaf: Node): Node[] {
  const out: Node[] = [];
  walk([leaf["targetList"], leaf["whereClause"], leaf["havingClause"]], (kind, node) => {
    if (kind !== "SubLink") return;
    out.push(node);
    return false;
  });
  return out;
}

/** The nodes that are top-level conjuncts of the block's WHERE (a lone condition is its own conjunct). */
function whereConjuncts(leaf: Node): Set<unknown> {
  const where = child(leaf, "whereClause");
  const and = child(where, "BoolExpr");
  const nodes = and !== undefined && and["boolop"] === "AND_EXPR" ? list(and, "args") : [where];
  return new Set(nodes.map((n) => child(n, "SubLink")).filter((n) => n !== undefined));
}

/** Window function calls of the block (not inside its subqueries). */
export function windowCalls(leaf: Node): Node[] {
  const out: Node[] = [];
  walk([leaf["targetList"], leaf["sortClause"]], (kind, node) => {
    if (kind === "SubLink") return false;
    if (kind === "FuncCall" && node["over"] !== undefined) out.push(node);
  });
  return out;
}

/** Indexes of the references on the nullable side of some outer join. */
function nullableRefs(fromClause: Node[], rangeVars: Node[]): Set<number> {
  const out = new Set<number>();
  const under = (node: unknown) => {
    walk(node, (kind, n) => {
      if (kind === "RangeVar") out.add(rangeVars.indexOf(n));
    });
  };
  walk(fromClause, (kind, node) => {
    if (kind !== "JoinExpr") return;
    const jt = node["jointype"];
    if (jt === "JOIN_LEFT" || jt === "JOIN_FULL") under(node["rarg"]);
    if (jt === "JOIN_RIGHT" || jt === "JOIN_FULL") under(node["larg"]);
  });
  out.delete(-1);
  return out;
}

/** PARTITION BY keys shared by every window (by parse shape); in a grouped block only those that are group keys. */
function windowKeys(args: PartitionInput, windows: Node[]): string[] {
  const { text } = args;
  const perWindow = windows.map((call) => {
    const over = child(call, "over")!;
    if (over["refname"] !== undefined) unsupported("WINDOW clause");
    const nodes = list(over, "partitionClause");
    const texts = partitionTexts(text, call);
    if (texts.length !== nodes.length) unsupported("query shape not recognised (PARTITION BY)");
    return nodes.map((n, i) => ({ shape: shape(n), text: texts[i]! }));
  });
  const groupShapes = new Set(args.groupNodes.map(shape));
  return perWindow[0]!.filter((k) =>
    perWindow.every((w) => w.some((o) => o.shape === k.shape)) && (!args.aggregated || groupShapes.has(k.shape))
  ).map((k) => k.text);
}

/** The texts of a window call's PARTITION BY items, read from its tokens: `f(...) [FILTER (...)] OVER (...)`. */
function partitionTexts(text: QueryText, call: Node): string[] {
  let j = text.tokenAt(Number(call["location"]));
  while (j < text.tokens.length && text.tokens[j]!.text !== "(") j++;
  j = text.matchParen(j);
  if (text.isKeyword(j, "filter")) j = text.matchParen(j + 1);
  if (!text.isKeyword(j, "over") || text.tokens[j + 1]?.text !== "(") {
    unsupported("query shape not recognised (OVER)");
  }
  if (!text.isKeyword(j + 2, "partition") || !text.isKeyword(j + 3, "by")) return [];
  const end = text.clauseEnd(j + 4, new Set(["order", "rows", "range", "groups"]));
  return text.splitCommas(j + 4, end).map(([a, b]) => text.range(a, b));
}

/**
 * DISTINCT ON expressions, read from the tokens before the select list. As in ORDER BY, a number is an output
 * position and a bare name is an output column before an input column.
 */
function distinctOnKeys(args: PartitionInput): string[] {
  const { text, clauses, block, leaf } = args;
  const close = clauses.firstTarget - 1;
  if (text.tokens[close]?.text !== ")") unsupported("query shape not recognised (DISTINCT ON)");
  let open = close;
  for (let depth = 0; open >= 0; open--) {
    const t = text.tokens[open]!.text;
    if (t === ")") depth++;
    else if (t === "(" && --depth === 0) break;
  }
  if (!text.isKeyword(open - 1, "on") || !text.isKeyword(open - 2, "distinct")) {
    unsupported("query shape not recognised (DISTINCT ON)");
  }
  const items = text.splitCommas(open + 1, close);
  const nodes = (leaf["distinctClause"] as Node[]).filter((d) => d !== null && Object.keys(d).length > 0);
  if (items.length !== nodes.length) unsupported("query shape not recognised (DISTINCT ON list)");
  const outputNames = list(leaf, "targetList").map((t) => child(t, "ResTarget")?.["name"]);
  return nodes.map((n, i) => {
    const ordinal = child(child(n, "A_Const"), "ival");
    if (ordinal !== undefined) {
      const t = block.targets[Number(ordinal["ival"]) - 1];
      if (t === undefined) unsupported(`DISTINCT ON position ${ordinal["ival"]}`);
      return t;
    }
    const fields = names(list(child(n, "ColumnRef"), "fields"));
    if (fields.length === 1) {
      const idx = outputNames.indexOf(fields[0]);
      if (idx >= 0 && args.targetNodes.length === outputNames.length) return block.targets[idx]!;
    }
    return text.range(items[i]![0], items[i]![1]);
  });
}

/** FULL JOIN of two tables: coalesce of the two sides of an equality in its ON condition. */
function fullJoinKey(args: PartitionInput): string {
  const fromClause = list(args.leaf, "fromClause");
  const join = child(fromClause[0], "JoinExpr");
  if (fromClause.length !== 1 || join === undefined || args.block.refs.length !== 2) {
    unsupported("FULL JOIN with more than two tables");
  }
  const quals = child(join, "quals");
  const and = child(quals, "BoolExpr");
  const candidates = and !== undefined && and["boolop"] === "AND_EXPR" ? list(and, "args") : [quals];
  for (const c of candidates) {
    const e = child(c, "A_Expr");
    if (e === undefined || e["kind"] !== "AEXPR_OP" || names(list(e, "name")).join() !== "=") continue;
    const sides = [child(e, "lexpr"), child(e, "rexpr")].map((s) => names(list(child(s, "ColumnRef"), "fields")));
    if (sides.some((f) => f.length === 0)) continue;
    const owners = sides.map((f) => columnRefs(f, args.refColumns));
    if (owners.some((o) => o.length !== 1) || owners[0]![0] === owners[1]![0]) continue;
    const [l, r] = sides.map((f) => f.map(quoteIdent).join("."));
    return `coalesce(${l}, ${r})`;
  }
  unsupported("FULL JOIN without an equality of a column of each side");
}

/** ORDER BY ... LIMIT/OFFSET/FETCH of the block, as text. */
function tail(args: PartitionInput): string | null {
  const { text, clauses } = args;
  const start = text.clauseEnd(clauses.fromKw + 1, new Set(["order", "limit", "offset", "fetch"]));
  const end = text.clauseEnd(start, new Set());
  return end > start ? text.range(start, end) : null;
}
