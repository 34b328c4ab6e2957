/**
 * Subqueries in expressions, as the partition recompute's discovery reads them (partition_planning.ts,
 * docs/differential.md), and what an expression reads: which table references, whether it holds a subquery, and a
 * WHERE's top-level conjuncts.
 */
import { parseSync } from "libpg-query";
import type { Sql, Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import type { Clauses, RefColumns } from "./block_planning.ts";
import { cutClauses, resolveRef, resolveRefs } from "./block_planning.ts";
import { type SublinkData, Unsupported } from "./diff_plan.ts";
import type { PartitionInput } from "./partition_planning.ts";
import { child, CLAUSE_END, list, names, type Node, QueryText, walk } from "./query_reading.ts";

/** The references an expression (SQL text) reads, by column name, and whether it contains a subquery. */
export function expressionRefs(expr: string, refColumns: RefColumns[]): { refs: Set<number>; sublink: boolean } {
  const refs = new Set<number>();
  let sublink = false;
  let tree: unknown;
  try {
    tree = parseSync(`SELECT 1 WHERE ${expr}`);
  } catch {
    // Not a lone expression (should not happen): assume it reads everything.
    return { refs: new Set(refColumns.map((_, i) => i)), sublink: true };
  }
  walk(tree, (kind, node) => {
    if (kind === "SubLink") sublink = true;
    if (kind !== "ColumnRef") return;
    const fields = names(list(node, "fields"));
    for (const i of columnRefs(fields, refColumns)) refs.add(i);
  });
  return { refs, sublink };
}

/** The references a column reference (its name parts) may denote. */
export function columnRefs(fields: string[], refColumns: RefColumns[]): number[] {
  if (fields.length >= 2) {
    const rel = quoteIdent(fields[fields.length - 2]!);
    return refColumns.flatMap((r, i) => (r.exposed === rel ? [i] : []));
  }
  const col = quoteIdent(fields[0] ?? "");
  return refColumns.flatMap((r, i) => (r.columns.includes(col) ? [i] : []));
}

/**
 * Top-level AND conjuncts of a WHERE text. Cut at AND tokens of depth 0 (the AND of a BETWEEN excepted) and checked
 * against the parser's count; when they disagree, [] (discovery then evaluates no conjunct, which only widens it).
 */
export function conjuncts(where: string | null): string[] {
  if (where === null) return [];
  const text = new QueryText(where);
  const tree = parseSync(`SELECT 1 WHERE ${where}`) as { stmts: { stmt: Node }[] };
  const w = child(child(tree.stmts[0]?.stmt, "SelectStmt"), "whereClause");
  return conjunctRanges(text, { from: 0, to: text.tokens.length, where: w }).map(([a, b]) => text.range(a, b));
}

/**
 * The token ranges of the top-level AND conjuncts of the WHERE at tokens [from, to) whose parse node is `where`; []
 * when the cut disagrees with the parser's count.
 */
export function conjunctRanges(
  text: QueryText,
  args: { from: number; to: number; where: Node | undefined },
): [number, number][] {
  const parts: [number, number][] = [];
  let depth = 0;
  let start = args.from;
  let between = 0;
  for (let j = args.from; j < args.to; j++) {
    const t = text.tokens[j]!;
    if (t.text === "(" || t.text === "[") depth++;
    else if (t.text === ")" || t.text === "]") depth--;
    else if (depth === 0 && t.keyword && t.text.toLowerCase() === "between") between++;
    else if (depth === 0 && t.keyword && t.text.toLowerCase() === "and") {
      if (between > 0) between--;
      else {
        parts.push([start, j]);
        start = j + 1;
      }
    }
  }
  parts.push([start, args.to]);
  const and = child(args.where, "BoolExpr");
  const count = and !== undefined && and["boolop"] === "AND_EXPR" ? list(and, "args").length : 1;
  return parts.length === count ? parts : [];
}

/**
 * A subquery in an expression: its FROM and WHERE as discovery reads them, or null when the planner cannot read it
 * (a set operation, WITH, a subquery in its FROM, an outer join): then every source it reads is in `touchAll`. So
 * are the sources of subqueries nested inside it.
 */
export async function planSublink(
  sql: Sql | Tx,
  ctx: {
    args: PartitionInput;
    sublink: Node;
    touchAll: Set<number>;
    positive: boolean;
    /** A positive IN whose subquery can be narrowed (to the touched values of its x) is added here. */
    narrowable: NarrowSite[];
  },
): Promise<SublinkData | null> {
  const { args, sublink, touchAll } = ctx;
  const sub = child(child(sublink, "subselect"), "SelectStmt");
  const touchAllUnder = async (node: unknown) => {
    const rvs: Node[] = [];
    walk(node, (kind, n) => {
      if (kind === "RangeVar") rvs.push(n);
    });
    for (const rv of rvs) {
      const [row] = await sql<{ relid: number | null }[]>`
        SELECT pg_catalog.to_regclass(${qualifiedName(rv)})::oid::int8 AS relid`;
      // A name that is no source (a WITH query's name) has its sources among the other names.
      if (!args.input.description.sources.some((s) => row?.relid !== null && Number(s.relid) === Number(row?.relid))) {
        continue;
      }
      touchAll.add((await resolveRef(sql, rv, args.input)).ref.source);
    }
  };
  if (sub === undefined) {
    await touchAllUnder(sublink);
    return null;
  }
  const fromClause = list(sub, "fromClause");
  let readable = (sub["op"] === undefined || sub["op"] === "SETOP_NONE") && sub["withClause"] === undefined &&
    fromClause.length > 0;
  walk(fromClause, (kind, node) => {
    if (kind === "RangeSubselect" || kind === "RangeFunction" || kind === "SubLink" || kind === "RangeTableFunc") {
      readable = false;
    }
    if (kind === "JoinExpr" && node["jointype"] !== "JOIN_INNER") readable = false;
  });
  if (!readable) {
    await touchAllUnder(sub);
    return null;
  }
  // Subqueries nested in this one: their sources' changes touch every partition.
  for (const key of ["targetList", "whereClause", "havingClause", "groupClause", "sortClause"]) {
    const nested: Node[] = [];
    walk(sub[key], (kind, n) => {
      if (kind === "SubLink") {
        nested.push(n);
        return false;
      }
    });
    for (const n of nested) await touchAllUnder(n);
  }
  const rangeVars: Node[] = [];
  walk(fromClause, (kind, n) => {
    if (kind === "RangeVar") rangeVars.push(n);
  });
  rangeVars.sort((a, b) => Number(a["location"]) - Number(b["location"]));
  let clauses: Clauses;
  try {
    clauses = cutClauses(args.text, { leaf: sub, rangeVars });
  } catch (e) {
    if (!(e instanceof Unsupported)) throw e;
    await touchAllUnder(sub);
    return null;
  }
  const { refs, refColumns } = await resolveRefs(sql, rangeVars, args.input);
  const kept = conjuncts(clauses.where).filter((c) => !expressionRefs(c, refColumns).sublink).map((c) => `(${c})`);
  const match = inMatch(sublink, { sub, outer: args.refColumns, inner: refColumns, positive: ctx.positive });
  if (match !== null) kept.push(match);
  if (match !== null && ctx.positive) {
    const site = narrowSite(args.text, { sublink, sub, outer: args.refColumns, inner: refColumns });
    if (site !== null) ctx.narrowable.push(site);
  }
  return { refs, from: clauses.from, where: kept.length === 0 ? null : kept.join(" AND ") };
}

/**
 * For `x IN (SELECT y ...)` (or `= ANY`, NOT IN alike) over plain columns: a changed row can change the membership
 * of x only if its y equals x or either is NULL (NOT IN's NULL semantics), so discovery adds that condition; an
 * uncorrelated IN then touches only the outer rows whose x a change names. Null when the shape is another.
 *
 * An IN that is a conjunct of WHERE (`positive`) keeps a row only when it is true, and a NULL y or x turns it from
 * false to NULL at most, which keeps the row out either way: there the condition is `y = x` alone, a join condition
 * PostgreSQL can hash or look up by index (with the NULL arms it compared every outer row with every changed row:
 * TPC-H Q18 took 27 s at scale 0.2).
 */
function inMatch(
  sublink: Node,
  cols: { sub: Node; outer: RefColumns[]; inner: RefColumns[]; positive: boolean },
): string | null {
  if (sublink["subLinkType"] !== "ANY_SUBLINK") return null;
  const op = names(list(sublink, "operName"));
  if (op.length > 0 && op.join() !== "=") return null;
  const targets = list(cols.sub, "targetList");
  if (targets.length !== 1) return null;
  const xFields = names(list(child(child(sublink, "testexpr"), "ColumnRef"), "fields"));
  const yFields = names(list(child(child(child(targets[0], "ResTarget"), "val"), "ColumnRef"), "fields"));
  if (xFields.length === 0 || yFields.length === 0 || [...xFields, ...yFields].includes("")) return null;
  // x is written qualified by its outer reference, unless a reference of the subquery has the same name.
  const owners = columnRefs(xFields, cols.outer);
  if (owners.length !== 1) return null;
  const exposed = cols.outer[owners[0]!]!.exposed;
  if (cols.inner.some((r) => r.exposed === exposed)) return null;
  const x = `${exposed}.${quoteIdent(xFields.at(-1)!)}`;
  const y = yFields.map(quoteIdent).join(".");
  return cols.positive ? `(${y} = ${x})` : `(${y} = ${x} OR ${y} IS NULL OR ${x} IS NULL)`;
}

/**
 * Where a positive `x IN (SELECT y ...)` can be narrowed to the touched values of x when x is a partition key: byte
 * offsets of the subquery's own WHERE (`open` before it, `close` after it) or, without one, of the end of its FROM
 * (`close`). Narrowing keeps x IN S exact for a recomputed row, whose x is a touched value, when filtering the
 * subquery's rows by y keeps every row whose y is such a value and changes nothing else: y is a column of the
 * subquery's own tables and, when it groups, one of its GROUP BY items (filtering by a group key keeps whole groups);
 * no DISTINCT ON, LIMIT, OFFSET or grouping sets. Null when the shape is another.
 */
export interface NarrowSite {
  /** x, as `reference index:column` (resolvedColumn). */
  x: string;
  column: string;
  open: number | null;
  close: number;
}

function narrowSite(
  text: QueryText,
  args: { sublink: Node; sub: Node; outer: RefColumns[]; inner: RefColumns[] },
): NarrowSite | null {
  const { sub } = args;
  if (sub["limitCount"] !== undefined || sub["limitOffset"] !== undefined) return null;
  if (list(sub, "distinctClause").some((d) => d !== null && Object.keys(d).length > 0)) return null;
  const xFields = names(list(child(child(args.sublink, "testexpr"), "ColumnRef"), "fields"));
  const target = child(child(list(sub, "targetList")[0], "ResTarget"), "val");
  const yFields = names(list(child(target, "ColumnRef"), "fields"));
  const x = resolved(xFields, args.outer);
  const y = resolved(yFields, args.inner);
  if (x === null || y === null) return null;
  const groups = list(sub, "groupClause");
  if (groups.some((g) => child(g, "GroupingSet") !== undefined)) return null;
  if (sub["havingClause"] !== undefined && groups.length === 0) return null;
  if (
    groups.length > 0 && !groups.some((g) => resolved(names(list(child(g, "ColumnRef"), "fields")), args.inner) === y)
  ) {
    return null;
  }
  const first = text.tokenAt(Number(child(list(sub, "targetList")[0], "ResTarget")!["location"]));
  const fromKw = text.clauseEnd(first, new Set(["from"]));
  const fromEnd = text.clauseEnd(fromKw + 1, CLAUSE_END);
  const column = yFields.map(quoteIdent).join(".");
  if (sub["whereClause"] === undefined) return { x, column, open: null, close: text.tokens[fromEnd - 1]!.end };
  if (!text.isKeyword(fromEnd, "where")) return null;
  const whereEnd = text.clauseEnd(fromEnd + 1, CLAUSE_END);
  return { x, column, open: text.tokens[fromEnd + 1]!.start, close: text.tokens[whereEnd - 1]!.end };
}

/** An expression that is a plain column, as `reference index:column` (resolved), else null. */
export function resolvedColumn(expr: string, refColumns: RefColumns[]): string | null {
  let tree: unknown;
  try {
    tree = parseSync(`SELECT ${expr}`);
  } catch {
    return null;
  }
  const t = tree as { stmts: { stmt: Node }[] };
  const only = list(child(t.stmts[0]?.stmt, "SelectStmt"), "targetList");
  if (only.length !== 1) return null;
  return resolved(names(list(child(child(child(only[0], "ResTarget"), "val"), "ColumnRef"), "fields")), refColumns);
}

/** A plain column reference as `reference index:column`, when it names exactly one reference's column. */
function resolved(fields: string[], refColumns: RefColumns[]): string | null {
  if (fields.length === 0 || fields.includes("")) return null;
  const owners = columnRefs(fields, refColumns);
  const col = quoteIdent(fields.at(-1)!);
  if (owners.length !== 1 || !refColumns[owners[0]!]!.columns.includes(col)) return null;
  return `${owners[0]}:${col}`;
}

function qualifiedName(rv: Node): string {
  const schema = rv["schemaname"] as string | undefined;
  const rel = quoteIdent(String(rv["relname"]));
  return schema === undefined ? rel : `${quoteIdent(schema)}.${rel}`;
}
