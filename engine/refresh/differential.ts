/**
 * DIFFERENTIAL refresh (DESIGN.md section 7): a stream table's change is computed from its sources' deltas and
 * applied in the refresh transaction.
 *
 * Planning parses the defining query with PostgreSQL's own parser (libpg-query) and cuts its text into clauses at
 * token boundaries (the scanner's tokens, never regular expressions). Table references in FROM become slots that a
 * refresh fills with the table itself (its state at the refresh snapshot, "new"), its delta since the frontier, or its
 * state at the frontier ("old" = new minus the delta, as signed weights). The delta of an inner join of n references
 * telescopes: sum over k of old_1 .. old_{k-1} x delta_k x new_{k+1} .. new_n, each row weighted by the product of
 * its weights. Three strategies apply a delta:
 *
 * - rows: projections, filters and joins. Row identity `__pgt_row_id` is a 64-bit hash of the sources' primary keys;
 *   the weighted delta rows are consolidated per row id and content, then deleted or upserted.
 * - algebraic: GROUP BY (or a global aggregate, or DISTINCT) whose outputs are group keys, count, and sum/avg over
 *   integer or numeric: per-group counts and sums of the delta are added to hidden state columns.
 * - recompute: any other grouped query (min, max, any aggregate, HAVING, float sums, and grouped UNION ALL
 *   branches): the groups the delta touches are recomputed from the sources and written where they differ.
 *
 * Everything in the plan is JSON (stored in the catalog); SQL is assembled at refresh time from the plan's pieces.
 */
import { loadModule, parseSync, scanSync } from "libpg-query";
import type { Sql, Tx } from "../../db/pool.ts";
import { quoteIdent, quoteQualified } from "../../db/identifiers.ts";
import { withUserSql } from "../../db/session.ts";
import { deltaFilter } from "../cdc.ts";
import type { Column, QueryDescription, QueryPlan } from "./plan.ts";
import { fullOnlyPlan } from "./full.ts";
import { type FunctionFacts, functionFacts } from "./functions.ts";
import { child, funcName, list, names, type Node, shape, walk } from "./parse_tree.ts";

/** A piece of FROM text: literal SQL, or the index of a table reference to fill in. */
type Segment = string | number;

interface RefData {
  /** Index into DiffPlan.sources. */
  source: number;
  /** The name exposed to the rest of the query (alias or relation name), quoted. */
  exposed: string;
  /** SQL appended after a substituted subquery when the reference had no alias (`AS "name"`), else "". */
  aliasSuffix: string;
  /** The reference's primary-key columns, qualified by the exposed name. */
  key: string[];
}

interface BlockData {
  strategy: "rows" | "algebraic" | "recompute";
  refs: RefData[];
  from: Segment[];
  where: string | null;
  /** Output expressions, `*` expanded, aliases removed. */
  targets: string[];
  /** Grouping expressions with ordinals and output aliases resolved (DISTINCT: the targets); [] when none. */
  groupKeys: string[];
  /** GROUP BY list, ordinals and aliases resolved (null: no GROUP BY). */
  groupBy: string | null;
  having: string | null;
  distinct: boolean;
  /** UNION ALL branch number (1-based), or 0 outside a UNION ALL. */
  branch: number;
  /** Algebraic strategy only. */
  algebraic: AlgebraicData | null;
}

interface AggData {
  kind: "count_star" | "count" | "sum" | "avg";
  arg: string | null;
  /** Hidden columns: non-null count (sum, avg) and running sum (avg). */
  nn: string | null;
  sum: string | null;
}

interface AlgebraicData {
  global: boolean;
  /** For each output column: the group key it shows, or the aggregate it is. */
  outputs: ({ group: number } | { agg: number })[];
  aggs: AggData[];
}

interface SourceData {
  relid: number;
  /** Quoted qualified table name. */
  table: string;
  /** Quoted qualified change buffer. */
  buffer: string;
  /** Quoted column names, in table order. */
  columns: string[];
  /** Quoted primary-key (or unique key) columns. */
  key: string[];
}

/** The `differential` field of a QueryPlan this module produces. */
export interface DiffPlan {
  version: 1;
  sources: SourceData[];
  blocks: BlockData[];
  /** Quoted visible columns, then their types (for casts in generated SQL). */
  columns: string[];
  types: string[];
  /** Visible columns whose type has no equality operator: consolidated by their text form. */
  textCompared: boolean[];
}

const ROW_ID = "__pgt_row_id";
const COUNT = "__pgt_count";
const CLAUSE_END = new Set([
  "where",
  "group",
  "having",
  "window",
  "order",
  "limit",
  "offset",
  "fetch",
  "for",
  "union",
  "intersect",
  "except",
]);

/** A construct the planner does not maintain differentially; the message names it. */
class Unsupported extends Error {}

function unsupported(reason: string): never {
  throw new Unsupported(reason);
}

// ---------------------------------------------------------------------------------------------------------------
// Query text, cut at the scanner's tokens

interface Token {
  start: number;
  end: number;
  text: string;
  keyword: boolean;
}

/** The query as UTF-8 bytes (parser locations are byte offsets) and its tokens. */
class QueryText {
  readonly bytes: Uint8Array;
  readonly tokens: Token[];
  constructor(readonly query: string) {
    this.bytes = new TextEncoder().encode(query);
    const scanned = scanSync(query) as {
      tokens: { start: number; end: number; text: string; keywordName: string; tokenName: string }[];
    };
    // Comments are not tokens here: a clause cut at its last token never ends in a `-- comment` that would swallow
    // the SQL generated after it.
    const tokens = scanned.tokens.filter((t) => t.tokenName !== "SQL_COMMENT" && t.tokenName !== "C_COMMENT");
    this.tokens = tokens.map((t) => ({
      start: t.start,
      end: t.end,
      text: t.text,
      keyword: t.keywordName !== "NO_KEYWORD",
    }));
  }

  slice(from: number, to: number): string {
    return new TextDecoder().decode(this.bytes.subarray(from, to));
  }

  /** Index of the token starting at byte `location`. */
  tokenAt(location: number): number {
    const i = this.tokens.findIndex((t) => t.start === location);
    if (i < 0) unsupported(`query shape not recognised (no token at offset ${location})`);
    return i;
  }

  isKeyword(i: number, word: string): boolean {
    const t = this.tokens[i];
    return t !== undefined && t.keyword && t.text.toLowerCase() === word;
  }

  /** Text of tokens [a, b). */
  range(a: number, b: number): string {
    if (b <= a) return "";
    return this.slice(this.tokens[a]!.start, this.tokens[b - 1]!.end);
  }

  /**
   * From token `i`, the index of the first token at nesting depth 0 that ends a clause: one of `stops` (keywords),
   * a closing parenthesis of an enclosing level, a semicolon, or the end.
   */
  clauseEnd(i: number, stops: Set<string>): number {
    let depth = 0;
    for (let j = i; j < this.tokens.length; j++) {
      const t = this.tokens[j]!;
      if (t.text === "(" || t.text === "[") depth++;
      else if (t.text === ")" || t.text === "]") {
        if (depth === 0) return j;
        depth--;
      } else if (depth === 0 && (t.text === ";" || (t.keyword && stops.has(t.text.toLowerCase())))) return j;
    }
    return this.tokens.length;
  }

  /** Splits tokens [a, b) at depth-0 commas into [start, end) index pairs. */
  splitCommas(a: number, b: number): [number, number][] {
    const out: [number, number][] = [];
    let depth = 0;
    let start = a;
    for (let j = a; j < b; j++) {
      const t = this.tokens[j]!.text;
      if (t === "(" || t === "[") depth++;
      else if (t === ")" || t === "]") depth--;
      else if (t === "," && depth === 0) {
        out.push([start, j]);
        start = j + 1;
      }
    }
    out.push([start, b]);
    return out;
  }

  /** Index just after the parenthesis matching the one at token `open`. */
  matchParen(open: number): number {
    let depth = 0;
    for (let j = open; j < this.tokens.length; j++) {
      const t = this.tokens[j]!.text;
      if (t === "(") depth++;
      else if (t === ")" && --depth === 0) return j + 1;
    }
    unsupported("query shape not recognised (unbalanced parentheses)");
  }
}

/**
 * `TABLE name` spelled out as `SELECT * FROM name`, its definition in PostgreSQL; the parser gives the former's
 * select list no position in the text. Such a TABLE starts the query, a parenthesis or a set operation's operand;
 * elsewhere in a SELECT the word can only be a column label (`AS table`).
 */
function expandTableCommands(query: string): string {
  const text = new QueryText(query);
  const starts = new Set(["(", "union", "intersect", "except", "all", "distinct"]);
  let out = "";
  let pos = 0;
  for (const [i, t] of text.tokens.entries()) {
    if (!t.keyword || t.text.toLowerCase() !== "table") continue;
    const before = text.tokens[i - 1]?.text.toLowerCase();
    if (before !== undefined && !starts.has(before)) continue;
    out += text.slice(pos, t.start) + "SELECT * FROM";
    pos = t.end;
  }
  if (pos === 0) return query;
  const expanded = out + text.slice(pos, text.bytes.length);
  try {
    parseSync(expanded);
    return expanded;
  } catch {
    return query; // not a shape foreseen above: planned as written, and refused with the planner's reason
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Planning

interface PlanInput {
  query: string;
  description: QueryDescription;
  requested: string;
}

/** Decides whether `query` is maintained differentially and returns its storage and refresh plan. */
export async function planQuery(sql: Sql | Tx, input: PlanInput): Promise<QueryPlan> {
  await loadModule();
  const { query, description } = input;
  try {
    const plan = await buildPlan(sql, query, description);
    await probe(sql, plan);
    return plan;
  } catch (e) {
    if (e instanceof Unsupported) return fullOnlyPlan(query, description, e.message);
    throw e;
  }
}

async function buildPlan(sql: Sql | Tx, original: string, description: QueryDescription): Promise<QueryPlan> {
  const query = expandTableCommands(original);
  const text = new QueryText(query);
  const tree = parseSync(query) as { stmts: { stmt: Node }[] };
  const stmt = child(tree.stmts[0]?.stmt, "SelectStmt");
  if (tree.stmts.length !== 1 || stmt === undefined) unsupported("not a single SELECT");
  if (stmt["withClause"] !== undefined) unsupported("WITH (common table expression)");
  checkSetOperationTop(stmt);

  const leaves = unionLeaves(stmt);
  const union = leaves.length > 1;
  const facts = await functionFacts(sql, stmt);
  if (facts.volatile.size > 0) unsupported(`volatile function ${[...facts.volatile].sort().join(", ")}`);
  if (facts.setReturning.size > 0) {
    unsupported(`set-returning function ${[...facts.setReturning].sort().join(", ")} in the select list`);
  }
  if (facts.unstable.size > 0) {
    unsupported(
      `function depending on the time, transaction or session: ${[...facts.unstable].sort().join(", ")} ` +
        `(rows kept from earlier refreshes would go stale)`,
    );
  }

  const sources: SourceData[] = [];
  const blocks: BlockData[] = [];
  for (const [i, leaf] of leaves.entries()) {
    blocks.push(await planBlock(sql, { text, leaf, description, sources, facts, branch: union ? i + 1 : 0 }));
  }
  for (const b of blocks) {
    if (b.targets.length !== description.columns.length) {
      unsupported(`query shape not recognised (${b.targets.length} outputs, expected ${description.columns.length})`);
    }
  }
  const columns = description.columns.map((c) => quoteIdent(c.name));
  const types = description.columns.map((c) => c.type);
  const top = blocks[0]!;
  const hiddenColumns: Column[] = [{ name: ROW_ID, type: "bigint" }];
  if (!union && top.strategy === "algebraic") {
    hiddenColumns.push({ name: COUNT, type: "bigint" });
    for (const a of top.algebraic!.aggs) {
      if (a.sum !== null) hiddenColumns.push({ name: a.sum, type: "numeric" });
      if (a.nn !== null) hiddenColumns.push({ name: a.nn, type: "bigint" });
    }
  }
  const diff: DiffPlan = { version: 1, sources, blocks, columns, types, textCompared: [] };
  diff.textCompared = await textComparedColumns(sql, types);
  return {
    unsupportedReason: null,
    columns: description.columns,
    hiddenColumns,
    uniqueKey: [ROW_ID],
    fullSelect: blocks.map((b) => fullSelectOf(b, diff)).join("\nUNION ALL\n"),
    differential: diff,
  };
}

function checkSetOperationTop(stmt: Node): void {
  if (list(stmt, "lockingClause").length > 0) unsupported("FOR UPDATE/SHARE");
  if (stmt["limitCount"] !== undefined || stmt["limitOffset"] !== undefined) unsupported("LIMIT/OFFSET");
}

/** The simple SELECTs under a tree of UNION ALL; refuses other set operations. */
function unionLeaves(stmt: Node): Node[] {
  const op = stmt["op"];
  if (op === undefined || op === "SETOP_NONE") return [stmt];
  if (op === "SETOP_UNION" && stmt["all"] !== true) unsupported("UNION without ALL");
  if (op === "SETOP_INTERSECT") unsupported("INTERSECT");
  if (op === "SETOP_EXCEPT") unsupported("EXCEPT");
  const larg = child(stmt, "larg")!;
  const rarg = child(stmt, "rarg")!;
  for (const side of [larg, rarg]) {
    checkSetOperationTop(side);
    if (side["withClause"] !== undefined) unsupported("WITH (common table expression)");
  }
  return [...unionLeaves(larg), ...unionLeaves(rarg)];
}

interface BlockInput {
  text: QueryText;
  leaf: Node;
  description: QueryDescription;
  sources: SourceData[];
  facts: FunctionFacts;
  branch: number;
}

async function planBlock(sql: Sql | Tx, input: BlockInput): Promise<BlockData> {
  const { text, leaf, facts } = input;
  if (list(leaf, "valuesLists").length > 0) unsupported("VALUES");
  if (list(leaf, "windowClause").length > 0) unsupported("WINDOW clause");
  if (leaf["intoClause"] !== undefined) unsupported("SELECT INTO");
  const fromClause = list(leaf, "fromClause");
  if (fromClause.length === 0) unsupported("a SELECT without FROM");
  const distinctClause = leaf["distinctClause"] as unknown[] | undefined;
  const distinct = distinctClause !== undefined;
  if (distinct && distinctClause.some((d) => d !== null && Object.keys(d as object).length > 0)) {
    unsupported("DISTINCT ON");
  }
  checkConstructs(leaf);

  // Table references, in text order.
  const rangeVars: Node[] = [];
  let usingJoin = false;
  walk(fromClause, (kind, node) => {
    if (kind === "RangeVar") rangeVars.push(node);
    if (kind === "JoinExpr" && (node["isNatural"] === true || list(node, "usingClause").length > 0)) usingJoin = true;
  });
  rangeVars.sort((a, b) => Number(a["location"]) - Number(b["location"]));
  const refs: RefData[] = [];
  const refColumns: { exposed: string; columns: string[] }[] = [];
  for (const rv of rangeVars) {
    const r = await resolveRef(sql, rv, input);
    refs.push(r.ref);
    refColumns.push({ exposed: r.ref.exposed, columns: r.columns });
  }

  // Clause boundaries.
  const targetList = list(leaf, "targetList");
  const firstTarget = text.tokenAt(Number(child(targetList[0], "ResTarget")!["location"]));
  const fromKw = text.clauseEnd(firstTarget, new Set(["from"]));
  if (!text.isKeyword(fromKw, "from")) unsupported("query shape not recognised (FROM not found)");
  const fromEnd = text.clauseEnd(fromKw + 1, CLAUSE_END);
  const from = fromSegments(text, fromKw + 1, fromEnd, rangeVars);
  let cursor = fromEnd;
  let where: string | null = null;
  if (leaf["whereClause"] !== undefined) {
    if (!text.isKeyword(cursor, "where")) unsupported("query shape not recognised (WHERE)");
    const end = text.clauseEnd(cursor + 1, CLAUSE_END);
    where = text.range(cursor + 1, end);
    cursor = end;
  }
  let groupBy: string | null = null;
  let groupItems: [number, number][] = [];
  const groupClause = list(leaf, "groupClause");
  if (groupClause.length > 0) {
    if (!text.isKeyword(cursor, "group") || !text.isKeyword(cursor + 1, "by")) {
      unsupported("query shape not recognised (GROUP BY)");
    }
    if (text.isKeyword(cursor + 2, "distinct") || text.isKeyword(cursor + 2, "all")) {
      unsupported("GROUP BY ALL/DISTINCT");
    }
    const end = text.clauseEnd(cursor + 2, CLAUSE_END);
    groupBy = text.range(cursor + 2, end);
    groupItems = text.splitCommas(cursor + 2, end);
    cursor = end;
  }
  let having: string | null = null;
  if (leaf["havingClause"] !== undefined) {
    if (!text.isKeyword(cursor, "having")) unsupported("query shape not recognised (HAVING)");
    const end = text.clauseEnd(cursor + 1, CLAUSE_END);
    having = text.range(cursor + 1, end);
  }

  // Output expressions.
  const items = text.splitCommas(firstTarget, fromKw);
  if (items.length !== targetList.length) unsupported("query shape not recognised (select list)");
  const targets: string[] = [];
  const targetNodes: (Node | null)[] = [];
  for (const [i, [a, b]] of items.entries()) {
    const rt = child(targetList[i], "ResTarget")!;
    const val = child(rt, "val");
    const star = starOf(val);
    if (star !== null) {
      if (star.relation === null && usingJoin) unsupported("SELECT * over a join with USING or NATURAL");
      const expanded = refColumns.filter((r) => star.relation === null || r.exposed === quoteIdent(star.relation));
      if (expanded.length === 0) unsupported("query shape not recognised (*)");
      for (const r of expanded) {
        for (const c of r.columns) {
          targets.push(`${r.exposed}.${c}`);
          targetNodes.push(null);
        }
      }
      continue;
    }
    let end = b;
    if (rt["name"] !== undefined) {
      end = b - 1;
      if (text.isKeyword(end - 1, "as")) end--;
    }
    targets.push(text.range(a, end));
    targetNodes.push(val ?? null);
  }

  // Aggregation.
  const aggregated = groupClause.length > 0 || having !== null || hasAggregate(targetList, facts);
  if (distinct && aggregated) unsupported("DISTINCT together with aggregates");
  let groupKeys: string[] = [];
  const groupNodes: unknown[] = [];
  if (groupClause.length > 0) {
    if (groupItems.length !== groupClause.length) unsupported("query shape not recognised (GROUP BY list)");
    const sourceColumns = new Set(refColumns.flatMap((r) => r.columns));
    groupKeys = groupClause.map((g, i) => {
      const [a, b] = groupItems[i]!;
      const ordinal = child(child(g, "A_Const"), "ival");
      if (ordinal !== undefined) {
        // GROUP BY n names the n-th output column.
        const n = Number(ordinal["ival"]);
        const t = targets[n - 1];
        if (t === undefined || targetNodes[n - 1] === null) unsupported(`GROUP BY position ${n}`);
        groupNodes.push(targetNodes[n - 1]);
        return t;
      }
      // A bare name is an input column first, else an output column's alias (PostgreSQL's rule).
      const fields = names(list(child(g, "ColumnRef"), "fields"));
      if (fields.length === 1 && !sourceColumns.has(quoteIdent(fields[0]!))) {
        const idx = targetList.findIndex((t) => child(t, "ResTarget")?.["name"] === fields[0]);
        if (idx >= 0 && targets.length === targetList.length) {
          groupNodes.push(targetNodes[idx]);
          return targets[idx]!;
        }
      }
      groupNodes.push(g);
      return text.range(a, b);
    });
    // Regenerated from the resolved keys: the generated selects do not keep output aliases.
    groupBy = groupKeys.join(", ");
  } else if (distinct) {
    groupKeys = [...targets];
  }

  const block: BlockData = {
    strategy: "rows",
    refs,
    from,
    where,
    targets,
    groupKeys,
    groupBy,
    having,
    distinct,
    branch: input.branch,
    algebraic: null,
  };
  if (aggregated || distinct) {
    const alg = input.branch === 0 ? algebraicPlan({ text, targetNodes, groupNodes, distinct, input }) : null;
    block.strategy = alg !== null && having === null ? "algebraic" : "recompute";
    block.algebraic = block.strategy === "algebraic" ? alg : null;
  }
  return block;
}

const REFUSED_NODES: Record<string, string> = {
  SubLink: "subquery in an expression",
  RangeSubselect: "subquery in FROM",
  RangeFunction: "function in FROM",
  RangeTableSample: "TABLESAMPLE",
  RangeTableFunc: "XMLTABLE in FROM",
  GroupingSet: "GROUPING SETS, ROLLUP or CUBE",
  GroupingFunc: "GROUPING SETS, ROLLUP or CUBE",
};

function checkConstructs(leaf: Node): void {
  walk(leaf, (kind, node) => {
    const refused = REFUSED_NODES[kind];
    if (refused !== undefined) unsupported(refused);
    if (kind === "JoinExpr") {
      const jt = String(node["jointype"]);
      if (jt !== "JOIN_INNER") {
        const name = { JOIN_LEFT: "LEFT", JOIN_RIGHT: "RIGHT", JOIN_FULL: "FULL" }[jt] ?? jt;
        unsupported(`outer join (${name} JOIN)`);
      }
      if (node["alias"] !== undefined) unsupported("an aliased join");
    } else if (kind === "RangeVar" && node["inh"] !== true) {
      unsupported("ONLY");
    } else if (kind === "FuncCall" && node["over"] !== undefined) {
      unsupported(`window function ${funcName(node).name}()`);
    }
  });
}

function starOf(val: Node | undefined): { relation: string | null } | null {
  const fields = list(child(val, "ColumnRef"), "fields");
  if (fields.length === 0 || child(fields.at(-1), "A_Star") === undefined) return null;
  if (fields.length === 1) return { relation: null };
  if (fields.length === 2) return { relation: String(child(fields[0], "String")?.["sval"]) };
  unsupported("schema-qualified *");
}

function hasAggregate(targetList: Node[], facts: FunctionFacts): boolean {
  let found = false;
  walk(targetList, (kind, node) => {
    if (kind !== "FuncCall") return;
    const f = funcName(node);
    if (facts.aggregates.has(`${f.schema ?? ""}.${f.name}`)) found = true;
  });
  return found;
}

async function resolveRef(
  sql: Sql | Tx,
  rv: Node,
  input: BlockInput,
): Promise<{ ref: RefData; columns: string[] }> {
  const schema = rv["schemaname"] as string | undefined;
  const relname = String(rv["relname"]);
  if (rv["catalogname"] !== undefined) unsupported("a database-qualified table name");
  const qualified = schema === undefined ? quoteIdent(relname) : `${quoteIdent(schema)}.${quoteIdent(relname)}`;
  const [row] = await sql<{ relid: number | null }[]>`SELECT pg_catalog.to_regclass(${qualified})::oid::int8 AS relid`;
  const source = input.description.sources.find((s) => row?.relid !== null && Number(s.relid) === Number(row?.relid));
  if (source === undefined) unsupported(`"${relname}" is not a source table (a view or a WITH query)`);
  if (source.primaryKey.length === 0) {
    unsupported(`source without primary key (${source.schema}.${source.name})`);
  }
  let index = input.sources.findIndex((s) => s.relid === Number(source.relid));
  if (index < 0) {
    index = input.sources.length;
    input.sources.push({
      relid: Number(source.relid),
      table: quoteQualified(source),
      buffer: `pgtrickle_changes.${quoteIdent(source.bufferTable)}`,
      columns: source.columns.map((c) => quoteIdent(c.name)),
      key: source.primaryKey.map(quoteIdent),
    });
  }
  const alias = child(rv, "alias");
  const aliasColumns = names(list(alias, "colnames"));
  const exposedName = alias !== undefined ? String(alias["aliasname"]) : relname;
  const exposed = quoteIdent(exposedName);
  // Column aliases rename the table's columns by position.
  const columns = source.columns.map((c, i) => quoteIdent(aliasColumns[i] ?? c.name));
  const key = source.primaryKey.map((k) => {
    const pos = source.columns.findIndex((c) => c.name === k);
    return `${exposed}.${columns[pos] ?? quoteIdent(k)}`;
  });
  return { ref: { source: index, exposed, aliasSuffix: alias === undefined ? ` AS ${exposed}` : "", key }, columns };
}

/** The FROM clause as text with a slot for each table reference's name. */
function fromSegments(text: QueryText, a: number, b: number, rangeVars: Node[]): Segment[] {
  const out: Segment[] = [];
  let pos = text.tokens[a]?.start ?? 0;
  const end = b > a ? text.tokens[b - 1]!.end : pos;
  for (const [i, rv] of rangeVars.entries()) {
    const first = text.tokenAt(Number(rv["location"]));
    let last = first;
    while (text.tokens[last + 1]?.text === "." && text.tokens[last + 2] !== undefined) last += 2;
    out.push(text.slice(pos, text.tokens[first]!.start));
    out.push(i);
    pos = text.tokens[last]!.end;
  }
  out.push(text.slice(pos, end));
  return out;
}

/** The algebraic form of a grouped block, or null when an output is not a group key, count, or exact sum/avg. */
function algebraicPlan(args: {
  text: QueryText;
  targetNodes: (Node | null)[];
  groupNodes: unknown[];
  distinct: boolean;
  input: BlockInput;
}): AlgebraicData | null {
  const { text, targetNodes, groupNodes, distinct, input } = args;
  const columns = input.description.columns;
  const groupShapes = groupNodes.map(shape);
  const outputs: AlgebraicData["outputs"] = [];
  const aggs: AggData[] = [];
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
    if (call === undefined) return null;
    const f = funcName(call);
    if (f.schema !== null && f.schema !== "pg_catalog") return null;
    if (
      call["agg_filter"] !== undefined || list(call, "agg_order").length > 0 || call["agg_distinct"] === true ||
      call["func_variadic"] === true
    ) return null;
    const type = columns[i]!.type;
    const args = list(call, "args");
    const n = aggs.length + 1;
    let agg: AggData;
    if (f.name === "count" && call["agg_star"] === true) agg = { kind: "count_star", arg: null, nn: null, sum: null };
    else if (args.length !== 1) return null;
    else if (f.name === "count") agg = { kind: "count", arg: argText(text, call), nn: null, sum: null };
    else if (f.name === "sum" && (type === "bigint" || type === "numeric")) {
      agg = { kind: "sum", arg: argText(text, call), nn: `__pgt_nn_${n}`, sum: null };
    } else if (f.name === "avg" && type === "numeric") {
      agg = { kind: "avg", arg: argText(text, call), nn: `__pgt_nn_${n}`, sum: `__pgt_sum_${n}` };
    } else return null;
    outputs.push({ agg: aggs.length });
    aggs.push(agg);
  }
  return { global: groupNodes.length === 0 && !distinct, outputs, aggs };
}

/** The text between an aggregate call's parentheses. */
function argText(text: QueryText, call: Node): string {
  const at = text.tokenAt(Number(call["location"]));
  let open = at;
  while (open < text.tokens.length && text.tokens[open]!.text !== "(") open++;
  const close = text.matchParen(open) - 1;
  return text.range(open + 1, close);
}

/** Visible columns whose type cannot be grouped (no equality operator); they are compared as text. */
async function textComparedColumns(sql: Sql | Tx, types: string[]): Promise<boolean[]> {
  const rows = await sql<{ type: string; ok: boolean }[]>`
    SELECT t.type, EXISTS (
      SELECT 1 FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
      WHERE am.amname IN ('btree', 'hash') AND oc.opcdefault
        AND (oc.opcintype = ty.oid OR oc.opcintype = ty.typbasetype
          OR (oc.opcintype = 'anyarray'::pg_catalog.regtype AND ty.typelem <> 0 AND ty.typlen = -1)
          OR (oc.opcintype = 'anyenum'::pg_catalog.regtype AND ty.typtype = 'e')
          OR (oc.opcintype = 'anyrange'::pg_catalog.regtype AND ty.typtype = 'r')
          OR (oc.opcintype = 'record'::pg_catalog.regtype AND ty.typtype = 'c')
          OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = ty.oid AND c.casttarget = oc.opcintype
                     AND c.castmethod = 'b'))
    ) AS ok
    FROM unnest(${types}::text[]) AS t(type) JOIN pg_catalog.pg_type ty ON ty.oid = pg_catalog.to_regtype(t.type)`;
  const ok = new Map(rows.map((r) => [r.type, r.ok]));
  return types.map((t) => ok.get(t) !== true);
}

// ---------------------------------------------------------------------------------------------------------------
// SQL assembly

function rowIdOf(block: BlockData, inner: string): string {
  return block.branch === 0 ? inner : `pg_catalog.hash_record_extended(ROW(${block.branch}, ${inner}), 0)`;
}

function groupRowId(block: BlockData, keys: string[]): string {
  const inner = keys.length === 0
    ? "0::int8"
    : `pg_catalog.hash_record_extended(ROW(${keys.map((k) => `(${k})`).join(", ")}), 0)`;
  return rowIdOf(block, inner);
}

function keyRowId(block: BlockData): string {
  return rowIdOf(block, `pg_catalog.hash_record_extended(ROW(${block.refs.flatMap((r) => r.key).join(", ")}), 0)`);
}

function renderFrom(block: BlockData, fill: (ref: number) => string): string {
  return block.from.map((s) => (typeof s === "number" ? fill(s) : s)).join("");
}

function plainFrom(block: BlockData, plan: DiffPlan): string {
  return renderFrom(block, (i) => plan.sources[block.refs[i]!.source]!.table);
}

function fromWhere(from: string, where: string | null, extra: string | null = null): string {
  const conds = [where === null ? null : `(${where})`, extra].filter((c) => c !== null);
  return `FROM ${from}${conds.length > 0 ? ` WHERE ${conds.join(" AND ")}` : ""}`;
}

/** The SELECT that computes a block's full content (visible, then hidden columns). */
function fullSelectOf(block: BlockData, plan: DiffPlan): string {
  const base = fromWhere(plainFrom(block, plan), block.where);
  const targets = block.targets.join(", ");
  switch (block.strategy) {
    case "rows":
      return `SELECT ${targets}, ${keyRowId(block)} ${base}`;
    case "recompute":
      return `SELECT ${block.distinct ? "DISTINCT " : ""}${targets}, ${groupRowId(block, block.groupKeys)} ${base}` +
        (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
        (block.having !== null ? ` HAVING ${block.having}` : "");
    case "algebraic": {
      const alg = block.algebraic!;
      const hidden: string[] = [];
      for (const a of alg.aggs) {
        if (a.sum !== null) hidden.push(`coalesce(pg_catalog.sum(${a.arg}), 0)`);
        if (a.nn !== null) hidden.push(`pg_catalog.count(${a.arg})`);
      }
      const group = block.distinct
        ? ` GROUP BY ${block.targets.map((_, i) => i + 1).join(", ")}`
        : (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "");
      return `SELECT ${targets}, ${groupRowId(block, block.groupKeys)}, pg_catalog.count(*)` +
        `${hidden.map((h) => `, ${h}`).join("")} ${base}${group}`;
    }
  }
}

interface Deltas {
  /** Source index -> temp table holding its delta (source columns + "__pgt_w"). */
  tables: Map<number, string>;
}

/**
 * The delta of a block's FROM/WHERE as telescoped terms (to be joined by UNION ALL), one per reference whose source
 * changed; `select` gets the term's weight expression and returns its select list.
 */
function deltaTerms(block: BlockData, plan: DiffPlan, deltas: Deltas, select: (weight: string) => string): string[] {
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

function cast(plan: DiffPlan, i: number, expr: string): string {
  return `CAST((${expr}) AS ${plan.types[i]})`;
}

/** Plan-time check: every generated statement is valid SQL against this database (run in a rolled-back tx). */
async function probe(sql: Sql | Tx, plan: QueryPlan): Promise<void> {
  const diff = plan.differential as DiffPlan;
  class Rollback extends Error {}
  const run = async (tx: Tx) => {
    const deltas: Deltas = { tables: new Map() };
    for (const [i, s] of diff.sources.entries()) {
      const name = `pg_temp.${quoteIdent(`pgt_probe_delta_${s.relid}`)}`;
      await tx.unsafe(`CREATE TEMP TABLE ${quoteIdent(`pgt_probe_delta_${s.relid}`)} AS
        SELECT ${s.columns.join(", ")}, 0::int8 AS "__pgt_w" FROM ${s.table} WITH NO DATA`);
      deltas.tables.set(i, name);
    }
    await tx.unsafe(`EXPLAIN SELECT * FROM (${plan.fullSelect}) s`);
    for (const block of diff.blocks) {
      for (const q of blockQueries(block, diff, deltas)) await tx.unsafe(`EXPLAIN ${q}`);
    }
    throw new Rollback();
  };
  // EXPLAIN runs none of the query, but planning may evaluate its functions: isolated (db/session.ts).
  const isolated = (tx: Tx) => withUserSql(tx, run);
  try {
    await (typeof (sql as Tx).savepoint === "function" ? isolated(sql as Tx) : (sql as Sql).begin(isolated));
  } catch (e) {
    if (e instanceof Rollback) return;
    const message = e instanceof Error ? e.message : String(e);
    unsupported(`query shape not recognised (generated SQL failed: ${message})`);
  }
}

/** The SELECTs a block's refresh runs (for the plan-time probe), with the apply temp tables inlined. */
function blockQueries(block: BlockData, plan: DiffPlan, deltas: Deltas): string[] {
  switch (block.strategy) {
    case "rows":
      return [rowsChanges(block, plan, deltas)];
    case "recompute": {
      const k = affectedGroups(block, plan, deltas);
      return [k, recomputedGroups(block, plan, `(${k})`)];
    }
    case "algebraic":
      return [algebraicChanges(block, plan, deltas)];
  }
}

/** Consolidated weighted row changes of a rows block: row id, visible columns, net weight. */
function rowsChanges(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const terms = deltaTerms(block, plan, deltas, (w) => {
    const cols = block.targets.map((t, i) => `${cast(plan, i, t)} AS "c${i}"`);
    return `${keyRowId(block)} AS rid, ${cols.join(", ")}, ${w} AS w`;
  });
  const group: string[] = ["rid"];
  const out: string[] = ["rid"];
  plan.columns.forEach((_, i) => {
    if (plan.textCompared[i]) {
      group.push(`"c${i}"::text`);
      out.push(`(pg_catalog.array_agg("c${i}"))[1] AS "c${i}"`);
    } else {
      group.push(`"c${i}"`);
      out.push(`"c${i}"`);
    }
  });
  return `SELECT ${out.join(", ")}, pg_catalog.sum(w) AS w FROM (${terms.join("\nUNION ALL\n")}) d ` +
    `GROUP BY ${group.join(", ")} HAVING pg_catalog.sum(w) <> 0`;
}

/** Row ids of the groups a recompute block's delta touches. */
function affectedGroups(block: BlockData, plan: DiffPlan, deltas: Deltas): string {
  const terms = deltaTerms(block, plan, deltas, () => `${groupRowId(block, block.groupKeys)} AS rid`);
  return `SELECT DISTINCT rid FROM (${terms.join("\nUNION ALL\n")}) d`;
}

/** The current content of the groups whose row ids `affected` (a subquery text) lists. */
function recomputedGroups(block: BlockData, plan: DiffPlan, affected: string): string {
  const rid = groupRowId(block, block.groupKeys);
  const restrict = block.groupKeys.length === 0 ? null : `${rid} IN (SELECT rid FROM ${affected} k)`;
  const cols = block.targets.map((t, i) => `${cast(plan, i, t)} AS "c${i}"`);
  // Output columns first, so that GROUP BY ordinals keep their meaning.
  return `SELECT ${block.distinct ? "DISTINCT " : ""}${cols.join(", ")}, ${rid} AS rid ` +
    fromWhere(plainFrom(block, plan), block.where, restrict) +
    (block.groupBy !== null ? ` GROUP BY ${block.groupBy}` : "") +
    (block.having !== null ? ` HAVING ${block.having}` : "");
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

// ---------------------------------------------------------------------------------------------------------------
// Applying a refresh

export interface ApplyOptions {
  plan: QueryPlan;
  target: { schema: string; name: string };
  /** The previous frontier, as pg_snapshot text. */
  frontier: string;
  /** Buffer rows in the delta per source relid, when the caller has counted them already. */
  changes?: Map<number, number>;
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
  return await withUserSql(tx, (sp) => applyChanges(sp, { plan, target, frontier: options.frontier, changed }));
}

/** Computes and applies the delta of the sources in `changed` (index into plan.sources, buffer rows). */
async function applyChanges(
  tx: Tx,
  input: { plan: DiffPlan; target: string; frontier: string; changed: { i: number; rows: number }[] },
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
  for (const { i } of inline ? [] : changed) {
    const s = plan.sources[Number(i)]!;
    const name = quoteIdent(`pgt_delta_${s.relid}`);
    const key = s.key.join(", ");
    await tx.unsafe(`DROP TABLE IF EXISTS pg_temp.${name}`);
    await tx.unsafe(`CREATE TEMP TABLE ${name} ON COMMIT DROP AS
      SELECT ${s.columns.join(", ")}, 0::int8 AS "__pgt_w" FROM ${s.table} WITH NO DATA`);
    // Consolidated per key (unless linear, above): the row as it was at the frontier (weight -1; the first change of
    // a key, in (change_id, action) order, is a 'D' exactly when the key existed then) and as it is now (+1: the last
    // change is an 'I' exactly when the key exists in the refresh's snapshot, and it is that row, so the source table
    // itself is not read). A key changed a thousand times is two rows.
    const consolidated = await tx.unsafe(
      linear ? `INSERT INTO pg_temp.${name} ${rawChanges(s)}` : `WITH raw AS MATERIALIZED (
         SELECT change_id, action, ${s.columns.join(", ")} FROM ${s.buffer}
         WHERE action IN ('I', 'D') AND ${deltaFilter("$1")})
       INSERT INTO pg_temp.${name}
       SELECT ${s.columns.join(", ")}, -1 FROM (
         SELECT DISTINCT ON (${key}) * FROM raw ORDER BY ${key}, change_id, action) f WHERE action = 'D'
       UNION ALL
       SELECT ${s.columns.join(", ")}, 1 FROM (
         SELECT DISTINCT ON (${key}) * FROM raw ORDER BY ${key}, change_id DESC, action DESC) l WHERE action = 'I'`,
      [input.frontier],
    );
    if (consolidated.count === 0) continue;
    // Statistics on the delta let the planner pick index lookups for small deltas (a hash join over a whole
    // dimension table cost more than the ANALYZE) and hash joins for large ones.
    await tx.unsafe(`ANALYZE pg_temp.${name}`);
    deltas.tables.set(Number(i), `pg_temp.${name}`);
  }
  for (const block of plan.blocks) {
    if (!block.refs.some((r) => deltas.tables.has(r.source))) continue;
    const statement = block.strategy === "rows"
      ? applyRows(plan, block, target, deltas)
      : block.strategy === "recompute"
      ? applyRecompute(plan, block, target, deltas)
      : applyAlgebraic(plan, block, target, deltas);
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
    return reads === 0 || (reads === 1 && b.strategy === "algebraic");
  });
}

/** Counts of one apply statement's data-modifying parts; xmax = 0 tells a fresh insert from an ON CONFLICT update. */
const COUNTS = `SELECT (SELECT pg_catalog.count(*) FROM del) AS deleted,
  (SELECT pg_catalog.count(*) FROM up WHERE fresh) AS inserted, (SELECT pg_catalog.count(*) FROM up WHERE NOT fresh) AS updated`;

/** One statement: consolidate the row changes, delete the rows that went, upsert the rows that came or changed. */
function applyRows(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  return `WITH chg AS MATERIALIZED (${rowsChanges(block, plan, deltas)}),
    del AS (
      DELETE FROM ${target} WHERE ${ROW_ID} IN (
        SELECT rid FROM chg WHERE w < 0 EXCEPT SELECT rid FROM chg WHERE w > 0)
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${[...plan.columns, ROW_ID].join(", ")})
      SELECT ${[...cols, "rid"].join(", ")} FROM chg WHERE w > 0
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${plan.columns.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
}

/** One statement: find the touched groups, recompute them, delete the ones gone, write the ones that differ. */
function applyRecompute(plan: DiffPlan, block: BlockData, target: string, deltas: Deltas): string {
  const cols = plan.columns.map((_, i) => `"c${i}"`);
  const mine = plan.columns.map((c) => `st.${c}`);
  const theirs = plan.columns.map((c) => `EXCLUDED.${c}`);
  return `WITH k AS MATERIALIZED (${affectedGroups(block, plan, deltas)}),
    n AS MATERIALIZED (${recomputedGroups(block, plan, "k")}),
    del AS (
      DELETE FROM ${target} st WHERE ${ROW_ID} IN (SELECT rid FROM k)
        AND NOT EXISTS (SELECT 1 FROM n WHERE n.rid = st.${ROW_ID})
      RETURNING 1),
    up AS (
      INSERT INTO ${target} AS st (${[...plan.columns, ROW_ID].join(", ")})
      SELECT ${[...cols, "rid"].join(", ")} FROM n
      ON CONFLICT (${ROW_ID}) DO UPDATE SET ${plan.columns.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
      WHERE ROW(${mine.join(", ")})::text IS DISTINCT FROM ROW(${theirs.join(", ")})::text
      RETURNING (xmax = 0) AS fresh)
    ${COUNTS}`;
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
    alg.outputs.forEach((o, c) => {
      if ("group" in o) return;
      const col = plan.columns[c]!;
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
  const del = alg.global ? "SELECT 1 WHERE false" : `DELETE FROM ${target} st USING d
      WHERE st.${ROW_ID} = d.rid AND st.${count} + d.dc = 0 RETURNING 1`;
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
