/**
 * The algebraic strategy: GROUP BY (or a global aggregate, or DISTINCT) whose outputs are group keys, count, and
 * sum/avg over integer or numeric. Per-group counts and sums of the delta are added to hidden state columns, so no
 * group is ever recomputed from its sources.
 */
import { quoteIdent } from "../../../../db/identifiers.ts";
import type { Column } from "../../../plan.ts";
import type { AggData, AlgebraicData, BlockData, DiffPlan } from "../diff_plan.ts";
import { COUNT, ROW_ID } from "../diff_plan.ts";
import { cast, COUNTS, type Deltas, deltaTerms, fromWhere, groupRowId, plainFrom } from "../delta_sql.ts";
import { parseSync } from "libpg-query";
import { child, funcName, list, type Node, QueryText, shape, walk } from "../query_reading.ts";
import type { Strategy } from "./strategy.ts";

export const algebraic: Strategy = {
  fullSelect: (block, plan) => {
    const alg = block.algebraic!;
    const hidden: string[] = [];
    for (const a of alg.aggs) {
      if (a.sum !== null) hidden.push(`coalesce(pg_catalog.sum(${a.arg}), 0)`);
      if (a.nn !== null) hidden.push(`pg_catalog.count(${a.arg})`);
    }
    const group = block.distinct
      ? ` GROUP BY ${block.targets.map((_, i) => i + 1).join(", ")}`
      : (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "");
    return `SELECT ${block.targets.join(", ")}, ${groupRowId(block, block.groupKeys)}, pg_catalog.count(*)` +
      `${hidden.map((h) => `, ${h}`).join("")} ${fromWhere(plainFrom(block, plan), block.where)}${group}`;
  },
  changeQueries: (block, plan, deltas) => [algebraicChanges(block, plan, deltas)],
  writeStatement: (block, plan, { target, deltas }) => applyAlgebraic(plan, block, target, deltas),
};

/** The hidden state columns an algebraic stream table keeps, in the order fullSelect yields them. */
export function algebraicHiddenColumns(alg: AlgebraicData): Column[] {
  const hidden: Column[] = [{ name: COUNT, type: "bigint" }];
  for (const a of alg.aggs) {
    if (a.sum !== null) hidden.push({ name: a.sum, type: "numeric" });
    if (a.nn !== null) hidden.push({ name: a.nn, type: "bigint" });
  }
  return hidden;
}

/**
 * The algebraic form of a grouped block, or null when an output is not a group key, count, exact sum/avg, or an
 * expression over those and constants. `typesOf` gives the types of aggregate calls in the block (null: unknown).
 */
export async function algebraicPlan(args: {
  text: QueryText;
  targetNodes: (Node | null)[];
  /** The output expressions as text (aliases removed). */
  targets: string[];
  groupNodes: unknown[];
  distinct: boolean;
  /** The query's output columns (their types decide which sums are exact). */
  columns: Column[];
  /** Keys (`schema.name`) of the names that are aggregates. */
  aggregates: Set<string>;
  typesOf: (calls: string[]) => Promise<string[] | null>;
}): Promise<AlgebraicData | null> {
  const { text, targetNodes, groupNodes, distinct, columns } = args;
  const groupShapes = groupNodes.map(shape);
  const outputs: AlgebraicData["outputs"] = [];
  const aggs: AggData[] = [];
  /** Aggregates inside expressions, whose types are asked for at the end. */
  const typed: { agg: AggData; call: string }[] = [];
  for (const [i, node] of targetNodes.entries()) {
    if (node === null) {
      if (!distinct) return null;
      outputs.push({ group: i });
      continue;
    }
    if (distinct) {
      outputs.push({ group: i });
      continue;
    }
    const g = groupShapes.indexOf(shape(node));
    if (g >= 0) {
      outputs.push({ group: g });
      continue;
    }
    const call = child(node, "FuncCall");
    if (call === undefined || !args.aggregates.has(aggregateKey(call))) {
      const expr = expressionOutput(args.targets[i]!, args.aggregates);
      if (expr === null) return null;
      const slots = expr.map((piece) => {
        if (typeof piece === "string") return piece;
        const n = aggs.length + 1;
        const agg: AggData = {
          ...piece.agg,
          nn: piece.agg.kind === "count_star" ? null : `__pgt_nn_${n}`,
          sum: piece.agg.kind === "sum" || piece.agg.kind === "avg" ? `__pgt_sum_${n}` : null,
        };
        aggs.push(agg);
        if (agg.kind === "sum" || agg.kind === "avg") typed.push({ agg, call: piece.call });
        return { agg: aggs.length - 1 };
      });
      outputs.push({ expr: slots });
      continue;
    }
    const type = columns[i]!.type;
    const agg = aggregateOf(text, call);
    const n = aggs.length + 1;
    if (agg === null) return null;
    else if (agg.kind === "sum" && (type === "bigint" || type === "numeric")) agg.nn = `__pgt_nn_${n}`;
    else if (agg.kind === "avg" && type === "numeric") {
      agg.nn = `__pgt_nn_${n}`;
      agg.sum = `__pgt_sum_${n}`;
    } else if (agg.kind === "sum" || agg.kind === "avg") return null;
    outputs.push({ agg: aggs.length });
    aggs.push(agg);
  }
  if (typed.length > 0) {
    // Exact only over integers and numeric: sum is then bigint or numeric, avg numeric.
    const types = await args.typesOf(typed.map((t) => t.call));
    if (types === null) return null;
    for (const [j, t] of typed.entries()) {
      const type = types[j]!;
      if (t.agg.kind === "sum" ? type !== "bigint" && type !== "numeric" : type !== "numeric") return null;
      t.agg.type = type;
    }
  }
  return { global: groupNodes.length === 0 && !distinct, outputs, aggs };
}

function aggregateKey(call: Node): string {
  const f = funcName(call);
  return `${f.schema ?? ""}.${f.name}`;
}

/** count(*), count, sum or avg of one argument, plain (no FILTER, ORDER BY, DISTINCT, VARIADIC), else null. */
function aggregateOf(text: QueryText, call: Node): AggData | null {
  const f = funcName(call);
  if (f.schema !== null && f.schema !== "pg_catalog") return null;
  if (
    call["agg_filter"] !== undefined || list(call, "agg_order").length > 0 || call["agg_distinct"] === true ||
    call["func_variadic"] === true || call["over"] !== undefined
  ) return null;
  const args = list(call, "args");
  if (f.name === "count" && call["agg_star"] === true) return { kind: "count_star", arg: null, nn: null, sum: null };
  if (args.length !== 1) return null;
  if (f.name === "count" || f.name === "sum" || f.name === "avg") {
    return { kind: f.name, arg: argText(text, call), nn: null, sum: null };
  }
  return null;
}

/**
 * An output that is an expression over aggregates and constants: its text cut at each aggregate call, or null when
 * it reads a column outside an aggregate (a group key in an expression), holds a subquery or a window, or an
 * aggregate other than count, sum and avg.
 */
function expressionOutput(
  target: string,
  aggregates: Set<string>,
): (string | { agg: AggData; call: string })[] | null {
  const text = new QueryText(`SELECT ${target}`);
  let tree: unknown;
  try {
    tree = parseSync(text.query);
  } catch {
    return null;
  }
  const calls: { agg: AggData; from: number; to: number }[] = [];
  let readable = true;
  walk(tree, (kind, node) => {
    if (kind === "SubLink" || kind === "ColumnRef") readable = false;
    if (kind !== "FuncCall" || !aggregates.has(aggregateKey(node))) return;
    const agg = aggregateOf(text, node);
    if (agg === null) readable = false;
    else {
      let open = text.tokenAt(Number(node["location"]));
      while (open < text.tokens.length && text.tokens[open]!.text !== "(") open++;
      calls.push({ agg, from: text.tokenAt(Number(node["location"])), to: text.matchParen(open) });
    }
    // The aggregate's argument reads columns: it is evaluated per source row, not here.
    return false;
  });
  if (!readable) return null;
  const pieces: (string | { agg: AggData; call: string })[] = [];
  let pos = text.tokens[1]?.start ?? text.bytes.length;
  for (const c of calls.sort((a, b) => a.from - b.from)) {
    pieces.push(text.slice(pos, text.tokens[c.from]!.start), { agg: c.agg, call: text.range(c.from, c.to) });
    pos = text.tokens[c.to - 1]!.end;
  }
  pieces.push(text.slice(pos, text.bytes.length));
  return pieces;
}

/** The text between an aggregate call's parentheses. */
function argText(text: QueryText, call: Node): string {
  const at = text.tokenAt(Number(call["location"]));
  let open = at;
  while (open < text.tokens.length && text.tokens[open]!.text !== "(") open++;
  const close = text.matchParen(open) - 1;
  return text.range(open + 1, close);
}

/** Per-group sums of an algebraic block's delta: row id, group keys, count change, per aggregate nn and sum. */
function algebraicChanges(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const alg = block.algebraic!;
  const terms = deltaTerms(block, plan, deltas, (w) => {
    const cols = [
      ...block.groupKeys.map((g, i) => `(${g}) AS "g${i}"`),
      ...alg.aggs.map((a, i) => (a.arg === null ? `NULL::int AS "a${i}"` : `(${a.arg}) AS "a${i}"`)),
    ];
    return `${cols.join(", ")}${cols.length > 0 ? ", " : ""}${w} AS w`;
  });
  const keys = block.groupKeys.map((_, i) => `"g${i}"`);
  const sums = alg.aggs.flatMap((a, i) =>
    a.kind === "count_star" ? [] : [
      `coalesce(pg_catalog.sum(w * ("a${i}" IS NOT NULL)::int), 0) AS "nn${i}"`,
      ...(a.kind === "count" ? [] : [`coalesce(pg_catalog.sum(w * "a${i}"), 0) AS "s${i}"`]),
    ]
  );
  const rid = keys.length === 0 ? "0::int8" : `pg_catalog.hash_record_extended(ROW(${keys.join(", ")}), 0)`;
  return `SELECT ${rid} AS rid, ${[...keys, "coalesce(pg_catalog.sum(w), 0) AS dc", ...sums].join(", ")} ` +
    `FROM (${terms.join("\nUNION ALL\n")}) d${keys.length > 0 ? ` GROUP BY ${keys.join(", ")}` : ""}`;
}

/**
 * One statement: per-group sums of the delta, then groups whose count reaches 0 deleted, others updated by adding,
 * new ones inserted. The parts touch disjoint rows, so they can share the statement's snapshot.
 */
function applyAlgebraic(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const alg = block.algebraic!;
  const count = quoteIdent(COUNT);
  // New state of each column, from the old row `st` (null for a new group) and the change row `d`.
  const fresh = (old: (c: string) => string) => {
    const set: [string, string][] = [[count, `${old(count)} + d.dc`]];
    for (const [i, a] of alg.aggs.entries()) {
      if (a.nn !== null) set.push([quoteIdent(a.nn), `${old(quoteIdent(a.nn))} + d."nn${i}"`]);
      if (a.sum !== null) set.push([quoteIdent(a.sum), `${old(quoteIdent(a.sum))} + d."s${i}"`]);
    }
    // An aggregate's new value from the hidden state (aggregates inside expressions).
    const value = (i: number) => {
      const a = alg.aggs[i]!;
      const nnNew = a.nn === null ? "" : `(${old(quoteIdent(a.nn))} + d."nn${i}")`;
      const sumNew = a.sum === null ? "" : `(${old(quoteIdent(a.sum))} + d."s${i}")`;
      // The change sums are numeric (sum of int8): a count is cast back to bigint, so `sum(v) / count(*)` divides as
      // integers as it does in the query.
      if (a.kind === "count_star") return `CAST(${old(count)} + d.dc AS bigint)`;
      if (a.kind === "count") return `CAST(${nnNew} AS bigint)`;
      const v = a.kind === "sum" ? sumNew : `${sumNew} / ${nnNew}::numeric`;
      return `CAST(CASE WHEN ${nnNew} = 0 THEN NULL ELSE ${v} END AS ${a.type})`;
    };
    alg.outputs.forEach((o, c) => {
      if ("group" in o) return;
      const col = plan.columns[c]!;
      if ("expr" in o) {
        set.push([col, cast(plan, c, o.expr.map((p) => (typeof p === "string" ? p : value(p.agg))).join(""))]);
        return;
      }
      const a = alg.aggs[o.agg]!;
      const i = o.agg;
      const nnNew = a.nn === null ? "" : `${old(quoteIdent(a.nn))} + d."nn${i}"`;
      if (a.kind === "count_star") set.push([col, `${old(count)} + d.dc`]);
      else if (a.kind === "count") set.push([col, `${old(col)} + d."nn${i}"`]);
      else if (a.kind === "sum") set.push([col, `CASE WHEN ${nnNew} = 0 THEN NULL ELSE ${old(col)} + d."s${i}" END`]);
      else {
        set.push([
          col,
          `CASE WHEN ${nnNew} = 0 THEN NULL ELSE (${old(quoteIdent(a.sum!))} + d."s${i}") / (${nnNew})::numeric END`,
        ]);
      }
    });
    return set;
  };
  const changed = [
    "d.dc <> 0",
    ...alg.aggs.flatMap((a, i) =>
      a.kind === "count_star" ? [] : [`d."nn${i}" <> 0`, ...(a.kind === "count" ? [] : [`d."s${i}" <> 0`])]
    ),
  ].join(" OR ");
  const updates = fresh((c) => `coalesce(st.${c}, 0)`);
  const groupCols: [string, string][] = [];
  alg.outputs.forEach((o, c) => {
    if ("group" in o) groupCols.push([plan.columns[c]!, cast(plan, c, `d."g${o.group}"`)]);
  });
  const inserts = [...groupCols, [ROW_ID, "d.rid"] as [string, string], ...fresh(() => "0")];
  // Only a group whose count falls can vanish: saying so (d.dc < 0) keeps the planner to index lookups for the few
  // such groups, where it otherwise hashed the whole stream table (43 of 53 ms at 1,000 changed rows over 100k groups).
  const del = alg.global ? "SELECT 1 WHERE false" : `DELETE FROM ${target} st USING d
      WHERE d.dc < 0 AND st.${ROW_ID} = d.rid AND st.${count} + d.dc = 0 RETURNING 1`;
  return `WITH d AS MATERIALIZED (${algebraicChanges(block, plan, deltas)}),
    del AS (${del}),
    upd AS (
      UPDATE ${target} st SET ${updates.map(([c, e]) => `${c} = ${e}`).join(", ")}
      FROM d WHERE st.${ROW_ID} = d.rid AND (${changed})${alg.global ? "" : ` AND st.${count} + d.dc <> 0`}
      RETURNING false AS fresh),
    ins AS (
      INSERT INTO ${target} (${inserts.map(([c]) => c).join(", ")})
      SELECT ${inserts.map(([, e]) => e).join(", ")} FROM d
      WHERE ${alg.global ? "true" : "d.dc > 0"} AND NOT EXISTS (SELECT 1 FROM ${target} st WHERE st.${ROW_ID} = d.rid)
      RETURNING true AS fresh),
    up AS (SELECT fresh FROM upd UNION ALL SELECT fresh FROM ins)
    ${COUNTS}`;
}
