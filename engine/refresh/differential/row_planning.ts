/**
 * The WHERE a refresh rewrites (diff_plan.ts WherePiece): cut for the IN narrowing of a partition recompute, and, for
 * an aggregate kept algebraically over its rows, with slots for the tables its subqueries read and guards around the
 * conjuncts holding them (docs/differential.md, "Aggregates over rows").
 */
import type { Sql, Tx } from "../../../db/pool.ts";
import { resolveRefs } from "./block_planning.ts";
import { type PartitionData, type RefData, Unsupported, type WherePiece } from "./diff_plan.ts";
import { type PartitionInput, windowCalls } from "./partition_planning.ts";
import { child, CLAUSE_END, list, type Node, walk } from "./query_reading.ts";
import { conjunctRanges, expressionRefs, type NarrowSite, resolvedColumn } from "./sublink_planning.ts";

/**
 * An aggregate that the partition recompute would recompute whole (global) or by large groups can instead be kept
 * algebraically over its rows (strategies/algebraic.ts, when its outputs allow): a refresh finds the rows its delta
 * touches, keyed by the references never NULL-extended (discovery as for an ungrouped block), and adds their
 * contributions now and subtracts those they had at the frontier. For that, every table the WHERE's subqueries read
 * becomes a slot to be filled with its state at the frontier, and each conjunct holding a subquery is guarded
 * (strategies/partition.ts renderWhere). Null when the groups are as fine as a table's rows, or the block has windows,
 * DISTINCT ON, LIMIT, a FULL JOIN, HAVING, a subquery in its select list, or a subquery reading something other than a
 * source.
 */
export async function rowPartition(
  sql: Sql | Tx,
  args: PartitionInput,
  planned: { partition: PartitionData; sites: NarrowSite[] },
): Promise<{ keys: string[]; oldWhere: { refs: RefData[]; where: WherePiece[] }; notes: string[] } | null> {
  const { partition } = planned;
  const { leaf, block } = args;
  if (!args.aggregated || block.having !== null || block.distinct) return null;
  // Groups as fine as some table's rows (the group keys hold a core reference's whole primary key) have few rows
  // each: recomputing the touched ones is cheap and served by the key's index (TPC-H Q18, by order: 0.2 s, 1.2 s over
  // rows). Coarser groups are kept over rows (Q4, five priorities: 0.06 s over rows, 0.6-0.9 s by group).
  const groupColumns = new Set(block.groupKeys.map((k) => resolvedColumn(k, args.refColumns)));
  const fine = block.refs.some((r, i) =>
    !partition.nullable.includes(i) && r.key.every((k) => groupColumns.has(resolvedColumn(k, args.refColumns)))
  );
  if (args.groupNodes.length > 0 && fine) return null;
  if (partition.distinctOn !== null) return null;
  if (partition.tail !== null || windowCalls(leaf).length > 0) return null;
  let blocked = false;
  walk(list(leaf, "fromClause"), (kind, node) => {
    if (kind === "JoinExpr" && node["jointype"] === "JOIN_FULL") blocked = true;
  });
  walk(leaf["targetList"], (kind) => {
    if (kind === "SubLink") blocked = true;
  });
  if (blocked) return null;
  const nullable = new Set(partition.nullable);
  const keys = block.refs.flatMap((r, i) => (nullable.has(i) ? [] : r.key));
  if (keys.length === 0) return null;
  let refs: RefData[] = [];
  let where: WherePiece[] = [];
  if (block.where !== null) {
    const rangeVars: Node[] = [];
    walk(leaf["whereClause"], (kind, n) => {
      if (kind === "RangeVar") rangeVars.push(n);
    });
    rangeVars.sort((a, b) => Number(a["location"]) - Number(b["location"]));
    try {
      refs = (await resolveRefs(sql, rangeVars, args.input)).refs;
    } catch (e) {
      // A WITH query's name inside a subquery, say: its state at the frontier cannot be written.
      if (e instanceof Unsupported) return null;
      throw e;
    }
    const pieces = wherePieces(args, { sites: planned.sites, keys, rangeVars, guards: true });
    if (pieces === null) return null;
    where = pieces;
  }
  const notes = partition.touchAll.length > 0 ? partition.notes.filter((n) => n.startsWith("a change to")) : [];
  return { keys, oldWhere: { refs, where }, notes };
}

/**
 * The block's WHERE as pieces: cut where the narrowable subqueries whose x is one of `keys` get their restriction
 * (sublink_planning.ts narrowSite), with each of `rangeVars` (tables its subqueries read) a slot numbered in order,
 * and, with `guards`, each top-level conjunct holding a subquery between guard pieces. Null when the WHERE as planned
 * is not the query's text (nothing may have been rewritten in it).
 */
export function wherePieces(
  args: PartitionInput,
  input: { sites: NarrowSite[]; keys: string[]; rangeVars: Node[]; guards: boolean },
): WherePiece[] | null {
  const { text, clauses, block } = args;
  if (block.where === null) return null;
  const whereKw = text.clauseEnd(clauses.fromKw + 1, CLAUSE_END);
  if (!text.isKeyword(whereKw, "where")) return null;
  const whereEnd = text.clauseEnd(whereKw + 1, CLAUSE_END);
  if (text.range(whereKw + 1, whereEnd) !== block.where) return null;
  const keyColumns = input.keys.map((k) => resolvedColumn(k, args.refColumns));
  const cuts: { at: number; to: number; piece: WherePiece }[] = [];
  for (const site of input.sites) {
    const key = keyColumns.indexOf(site.x);
    if (key < 0) continue;
    if (site.open !== null) cuts.push({ at: site.open, to: site.open, piece: { slot: "open" } });
    const slot = site.open === null ? "where" as const : "and" as const;
    cuts.push({ at: site.close, to: site.close, piece: { slot, key, column: site.column } });
  }
  if (input.guards) {
    const ranges = conjunctRanges(text, { from: whereKw + 1, to: whereEnd, where: child(args.leaf, "whereClause") });
    for (const [a, b] of ranges) {
      if (!expressionRefs(text.range(a, b), args.refColumns).sublink) continue;
      cuts.push({ at: text.tokens[a]!.start, to: text.tokens[a]!.start, piece: { slot: "guard" } });
      cuts.push({ at: text.tokens[b - 1]!.end, to: text.tokens[b - 1]!.end, piece: { slot: "end_guard" } });
    }
  }
  for (const [i, rv] of input.rangeVars.entries()) {
    const first = text.tokenAt(Number(rv["location"]));
    let last = first;
    while (text.tokens[last + 1]?.text === "." && text.tokens[last + 2] !== undefined) last += 2;
    cuts.push({ at: text.tokens[first]!.start, to: text.tokens[last]!.end, piece: i });
  }
  // At one offset: a conjunct's end, then the next one's start (a guard opens before what it holds).
  const rank = (p: WherePiece) =>
    typeof p === "object" && p.slot === "end_guard" ? 0 : typeof p === "object" && p.slot === "guard" ? 1 : 2;
  cuts.sort((a, b) => a.at - b.at || rank(a.piece) - rank(b.piece) || a.to - b.to);
  const pieces: WherePiece[] = [];
  let pos = text.tokens[whereKw + 1]!.start;
  for (const c of cuts) {
    pieces.push(text.slice(pos, c.at), c.piece);
    pos = c.to;
  }
  pieces.push(text.slice(pos, text.tokens[whereEnd - 1]!.end));
  return pieces;
}
