/**
 * Planning one block: a simple SELECT (the whole query, or one UNION ALL branch). Its clauses are cut from the
 * query's text at token boundaries and its table references become slots that a refresh fills with the table, its
 * delta, or its state at the frontier (delta_sql.ts); then the block gets its strategy.
 */
import type { Sql, Tx } from "../../../db/pool.ts";
import { quoteIdent, quoteQualified } from "../../../db/identifiers.ts";
import { TrickleError } from "../../errors.ts";
import type { QueryDescription } from "../../plan.ts";
import { describeQuery } from "../../query.ts";
import { type BlockData, type RefData, type Segment, type SourceData, unsupported } from "./diff_plan.ts";
import { subqueryInFromReason } from "./flatten.ts";
import type { FunctionFacts } from "./functions.ts";
import { child, CLAUSE_END, funcName, list, names, type Node, type QueryText, walk } from "./query_reading.ts";
import { planPartition } from "./partition_planning.ts";
import { rowPartition } from "./row_planning.ts";
import { algebraicPlan } from "./strategies/algebraic.ts";

export interface BlockInput {
  text: QueryText;
  leaf: Node;
  description: QueryDescription;
  /** The plan's sources so far; a reference to a new table adds it. */
  sources: SourceData[];
  facts: FunctionFacts;
  branch: number;
}

/** A table reference's exposed name and its column names (aliases applied), quoted. */
export interface RefColumns {
  exposed: string;
  columns: string[];
}

/** The clauses of a block, cut from the query text. */
export interface Clauses {
  /** Token index of the first select-list item and of FROM. */
  firstTarget: number;
  fromKw: number;
  from: Segment[];
  where: string | null;
  groupBy: string | null;
  /** GROUP BY items as token ranges. */
  groupItems: [number, number][];
  having: string | null;
}

/** Plans one simple SELECT: its references, clauses, outputs, grouping, and strategy. */
export async function planBlock(sql: Sql | Tx, input: BlockInput): Promise<BlockData> {
  const { text, leaf, facts } = input;
  const { fromClause, distinct, distinctOn } = checkBlock(leaf, facts);
  const { rangeVars, refs, refColumns, usingJoin } = await tableReferences(sql, { fromClause, input });
  const clauses = cutClauses(text, { leaf, rangeVars });
  const { targets, targetNodes } = outputExpressions(text, { leaf, clauses, refColumns, usingJoin });
  const targetList = list(leaf, "targetList");
  const aggregated = list(leaf, "groupClause").length > 0 || clauses.having !== null ||
    hasAggregate(targetList, facts);
  if (distinct && !distinctOn && aggregated) unsupported("DISTINCT together with aggregates");
  const grouping = groupKeys(text, {
    leaf,
    clauses,
    refColumns,
    targets,
    targetNodes,
    distinct: distinct && !distinctOn,
  });
  const block: BlockData = {
    strategy: "rows",
    refs,
    from: clauses.from,
    where: clauses.where,
    targets,
    groupKeys: grouping.keys,
    groupBy: grouping.groupBy,
    having: clauses.having,
    distinct: distinct && !distinctOn,
    branch: input.branch,
    algebraic: null,
  };
  // Outer joins, subqueries in expressions, windows, DISTINCT ON and top-k: the partition recompute.
  const partitionInput = {
    text,
    leaf,
    input,
    block,
    rangeVars,
    refColumns,
    clauses,
    targetNodes,
    groupNodes: grouping.nodes,
    aggregated,
  };
  const planned = await planPartition(sql, partitionInput);
  // Grouped UNION ALL branches share the storage's columns, which have no room for per-branch state.
  const algebraicOf = () =>
    input.branch !== 0 ? Promise.resolve(null) : algebraicPlan({
      text,
      targetNodes,
      targets,
      groupNodes: grouping.nodes,
      distinct,
      columns: input.description.columns,
      aggregates: facts.aggregates,
      typesOf: (calls) => aggregateTypes(sql, { text, clauses, calls }),
    });
  if (planned !== null) {
    const { partition } = planned;
    // An aggregate over outer joins or subqueries in WHERE: algebraic over its rows where its outputs allow.
    const rows = input.branch === 0 ? await rowPartition(sql, partitionInput, planned) : null;
    const alg = rows === null ? null : await algebraicOf();
    if (rows !== null && alg !== null) {
      block.strategy = "algebraic";
      block.algebraic = alg;
      const { narrowWhere: _, ...rest } = partition;
      block.partition = { ...rest, keys: rows.keys, byValue: true, notes: rows.notes, oldWhere: rows.oldWhere };
      return block;
    }
    block.strategy = "partition";
    block.partition = partition;
    return block;
  }
  if (aggregated || distinct) {
    const alg = await algebraicOf();
    block.strategy = alg !== null && clauses.having === null ? "algebraic" : "recompute";
    block.algebraic = block.strategy === "algebraic" ? alg : null;
  }
  return block;
}

/** Ends of a block after its FROM, WHERE, GROUP BY and HAVING. */
const BLOCK_END = new Set(["window", "order", "limit", "offset", "fetch", "for", "union", "intersect", "except"]);

/**
 * The types of aggregate calls over the block's FROM, WHERE and GROUP BY, as PostgreSQL describes them; null when it
 * cannot (the block is then not algebraic).
 */
async function aggregateTypes(
  sql: Sql | Tx,
  args: { text: QueryText; clauses: Clauses; calls: string[] },
): Promise<string[] | null> {
  const { text, clauses, calls } = args;
  const end = text.clauseEnd(clauses.fromKw + 1, BLOCK_END);
  // The calls and clauses are the defining query's own text (SQL by design, checked at creation).
  const probe = `SELECT ${calls.map((c, i) => `${c} AS "a${i}"`).join(", ")} ${text.range(clauses.fromKw, end)}`;
  try {
    return (await describeQuery(sql, probe)).columns.map((c) => c.type);
  } catch (e) {
    if (e instanceof TrickleError) return null;
    throw e;
  }
}

/** Refuses what a block may not contain; returns its FROM list and whether it is DISTINCT (or DISTINCT ON). */
function checkBlock(leaf: Node, facts: FunctionFacts): { fromClause: Node[]; distinct: boolean; distinctOn: boolean } {
  if (list(leaf, "valuesLists").length > 0) unsupported("VALUES");
  if (list(leaf, "windowClause").length > 0) unsupported("WINDOW clause");
  if (leaf["intoClause"] !== undefined) unsupported("SELECT INTO");
  const fromClause = list(leaf, "fromClause");
  if (fromClause.length === 0) unsupported("a SELECT without FROM");
  const distinctClause = leaf["distinctClause"] as unknown[] | undefined;
  const distinct = distinctClause !== undefined;
  const distinctOn = distinct && distinctClause.some((d) => d !== null && Object.keys(d as object).length > 0);
  // A subquery in ON would be evaluated, in a delta term, against a state its own sources' delta does not describe.
  walk(fromClause, (kind) => {
    if (kind === "SubLink") unsupported("subquery in a join condition");
  });
  for (const key of ["groupClause", "sortClause", "limitCount", "limitOffset"]) {
    walk(leaf[key], (kind) => {
      if (kind === "SubLink") unsupported(`subquery in ${key === "groupClause" ? "GROUP BY" : "ORDER BY or LIMIT"}`);
    });
  }
  checkConstructs(leaf, facts);
  return { fromClause, distinct, distinctOn };
}

/** The block's table references in text order, each resolved to a source. */
async function tableReferences(
  sql: Sql | Tx,
  args: { fromClause: Node[]; input: BlockInput },
): Promise<{ rangeVars: Node[]; refs: RefData[]; refColumns: RefColumns[]; usingJoin: boolean }> {
  const rangeVars: Node[] = [];
  let usingJoin = false;
  walk(args.fromClause, (kind, node) => {
    if (kind === "RangeVar") rangeVars.push(node);
    if (kind === "JoinExpr" && (node["isNatural"] === true || list(node, "usingClause").length > 0)) usingJoin = true;
  });
  rangeVars.sort((a, b) => Number(a["location"]) - Number(b["location"]));
  return { rangeVars, ...await resolveRefs(sql, rangeVars, args.input), usingJoin };
}

/** Each table reference resolved (resolveRef), in order, with the columns it exposes. */
export async function resolveRefs(
  sql: Sql | Tx,
  rangeVars: Node[],
  input: BlockInput,
): Promise<{ refs: RefData[]; refColumns: RefColumns[] }> {
  const refs: RefData[] = [];
  const refColumns: RefColumns[] = [];
  for (const rv of rangeVars) {
    const r = await resolveRef(sql, rv, input);
    refs.push(r.ref);
    refColumns.push({ exposed: r.ref.exposed, columns: r.columns });
  }
  return { refs, refColumns };
}

/** Cuts FROM, WHERE, GROUP BY and HAVING out of the query text at the scanner's tokens. */
export function cutClauses(text: QueryText, args: { leaf: Node; rangeVars: Node[] }): Clauses {
  const { leaf, rangeVars } = args;
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
  if (list(leaf, "groupClause").length > 0) {
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
  return { firstTarget, fromKw, from, where, groupBy, groupItems, having };
}

/** The output expressions, `*` expanded and aliases removed, with their parse nodes (null for an expanded `*`). */
function outputExpressions(
  text: QueryText,
  args: { leaf: Node; clauses: Clauses; refColumns: RefColumns[]; usingJoin: boolean },
): { targets: string[]; targetNodes: (Node | null)[] } {
  const { leaf, clauses, refColumns, usingJoin } = args;
  const targetList = list(leaf, "targetList");
  const items = text.splitCommas(clauses.firstTarget, clauses.fromKw);
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
  return { targets, targetNodes };
}

/** Grouping keys with ordinals and output aliases resolved (DISTINCT: the outputs), their nodes, and GROUP BY. */
function groupKeys(
  text: QueryText,
  args: {
    leaf: Node;
    clauses: Clauses;
    refColumns: RefColumns[];
    targets: string[];
    targetNodes: (Node | null)[];
    distinct: boolean;
  },
): { keys: string[]; nodes: unknown[]; groupBy: string | null } {
  const { leaf, clauses, refColumns, targets, targetNodes } = args;
  const groupClause = list(leaf, "groupClause");
  const targetList = list(leaf, "targetList");
  const nodes: unknown[] = [];
  if (groupClause.length === 0) return { keys: args.distinct ? [...targets] : [], nodes, groupBy: clauses.groupBy };
  if (clauses.groupItems.length !== groupClause.length) unsupported("query shape not recognised (GROUP BY list)");
  const sourceColumns = new Set(refColumns.flatMap((r) => r.columns));
  const keys = groupClause.map((g, i) => {
    const [a, b] = clauses.groupItems[i]!;
    const ordinal = child(child(g, "A_Const"), "ival");
    if (ordinal !== undefined) {
      // GROUP BY n names the n-th output column.
      const n = Number(ordinal["ival"]);
      const t = targets[n - 1];
      if (t === undefined || targetNodes[n - 1] === null) unsupported(`GROUP BY position ${n}`);
      nodes.push(targetNodes[n - 1]);
      return t;
    }
    // A bare name is an input column first, else an output column's alias (PostgreSQL's rule).
    const fields = names(list(child(g, "ColumnRef"), "fields"));
    if (fields.length === 1 && !sourceColumns.has(quoteIdent(fields[0]!))) {
      const idx = targetList.findIndex((t) => child(t, "ResTarget")?.["name"] === fields[0]);
      if (idx >= 0 && targets.length === targetList.length) {
        nodes.push(targetNodes[idx]);
        return targets[idx]!;
      }
    }
    nodes.push(g);
    return text.range(a, b);
  });
  // Regenerated from the resolved keys: the generated selects do not keep output aliases.
  return { keys, nodes, groupBy: keys.join(", ") };
}

const REFUSED_NODES: Record<string, string> = {
  RangeFunction: "function in FROM",
  RangeTableSample: "TABLESAMPLE",
  RangeTableFunc: "XMLTABLE in FROM",
  GroupingSet: "GROUPING SETS, ROLLUP or CUBE",
  GroupingFunc: "GROUPING SETS, ROLLUP or CUBE",
};

function checkConstructs(leaf: Node, facts: FunctionFacts): void {
  walk(leaf, (kind, node) => {
    const refused = REFUSED_NODES[kind];
    if (refused !== undefined) unsupported(refused);
    // Simple ones were merged (flatten.ts); what is left says why it was not.
    if (kind === "RangeSubselect") unsupported(subqueryInFromReason(node, facts.aggregates) ?? "subquery in FROM");
    if (kind === "JoinExpr") {
      const jt = String(node["jointype"]);
      if (!["JOIN_INNER", "JOIN_LEFT", "JOIN_RIGHT", "JOIN_FULL"].includes(jt)) unsupported(`join type ${jt}`);
      if (node["alias"] !== undefined) unsupported("an aliased join");
    } else if (kind === "RangeVar" && node["inh"] !== true) {
      unsupported("ONLY");
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
    // A subquery's aggregates are its own; an aggregate name with OVER is a window function.
    if (kind === "SubLink") return false;
    if (kind !== "FuncCall" || node["over"] !== undefined) return;
    const f = funcName(node);
    if (facts.aggregates.has(`${f.schema ?? ""}.${f.name}`)) found = true;
  });
  return found;
}

/** A table reference resolved to a source of the plan (added to it when new), its key and column names. */
export async function resolveRef(
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
