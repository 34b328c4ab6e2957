/**
 * Planning: whether a defining query is maintained differentially, and how. The query is read (query_reading.ts),
 * refused with the construct's name when the engine cannot maintain it, cut into blocks (one per set-operation branch,
 * block_planning.ts), each given a strategy; the SQL every refresh will run is then checked against the database.
 */
import { loadModule, parseSync } from "libpg-query";
import type { Sql, Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import { inRolledBackTransaction } from "../../rolled_back.ts";
import type { Column, QueryDescription, QueryPlan } from "../../plan.ts";
import { fullOnlyPlan } from "../full.ts";
import { planBlock } from "./block_planning.ts";
import type { Deltas } from "./delta_sql.ts";
import { type BlockData, type DiffPlan, PART, ROW_ID, type SourceData, Unsupported, unsupported } from "./diff_plan.ts";
import { flattenQuery } from "./flatten.ts";
import { type FunctionFacts, functionFacts } from "./functions.ts";
import { child, expandTableCommands, list, type Node, QueryText } from "./query_reading.ts";
import {
  chooseBranchKeys,
  readSetOperations,
  setOperationChangeQueries,
  setOperationFullSelect,
  setOperationHiddenColumns,
  setOperationIndexes,
} from "./set_operations.ts";
import { algebraicHiddenColumns } from "./strategies/algebraic.ts";
import { strategyOf } from "./strategies/strategy.ts";
import { createDeltaTable } from "./temp_tables.ts";

export interface PlanInput {
  query: string;
  /** The query's description (engine/query.ts), with the parse tree planning reads. */
  description: QueryDescription;
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
  const expanded = expandTableCommands(original);
  // The tree describeQuery parsed, unless `TABLE name` was spelled out (new text, new locations).
  const expandedTree = expanded === original ? description.tree : reparse(expanded);
  // Flattening moves function calls without adding any: the facts of the user's query hold for the rewrite.
  const facts = await functionFacts(sql, expandedTree);
  refuseFunctions(facts);
  // WITH queries and simple subqueries in FROM are rewritten away (flatten.ts); the plan is made from the rewrite.
  const query = await flattenQuery(sql, {
    query: expanded,
    aggregates: facts.aggregates,
    sources: description.sources,
  });
  const text = new QueryText(query);
  const stmt = query === expanded ? expandedTree : reparse(query);
  const { leaves, tree } = readSetOperations(stmt, checkSetOperationSide);
  // A simple SELECT may end in ORDER BY ... LIMIT (top-k, planned with its block); a set operation may not.
  if (leaves.length > 1) checkSetOperationTop(stmt);
  else if (list(stmt, "lockingClause").length > 0) unsupported("FOR UPDATE/SHARE");
  const union = leaves.length > 1;

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
  if (!union && top.strategy === "algebraic") hiddenColumns.push(...algebraicHiddenColumns(top.algebraic!));
  // An algebraic block over rows (partition.oldWhere) keeps groups, with no partition column.
  const partitioned = top.partition !== undefined && top.strategy === "partition";
  if (partitioned) hiddenColumns.push({ name: PART, type: "bigint" });
  const diff: DiffPlan = { version: 1, sources, blocks, columns, types, textCompared: [] };
  const notes = blocks.flatMap((b) => b.partition?.notes ?? []);
  if (notes.length > 0) diff.notes = notes;
  diff.textCompared = await textComparedColumns(sql, types);
  if (tree !== null) {
    diff.setOperation = tree;
    await chooseBranchKeys(sql, { plan: diff, leafNodes: leaves });
    return {
      unsupportedReason: null,
      columns: description.columns,
      hiddenColumns: setOperationHiddenColumns(tree),
      uniqueKey: [ROW_ID],
      indexes: setOperationIndexes(tree),
      fullSelect: setOperationFullSelect(diff),
      differential: diff,
    };
  }
  return {
    unsupportedReason: null,
    columns: description.columns,
    hiddenColumns,
    uniqueKey: [ROW_ID],
    ...(partitioned ? { indexes: [[PART]] } : {}),
    fullSelect: blocks.map((b) => strategyOf(b).fullSelect(b, diff)).join("\nUNION ALL\n"),
    differential: diff,
  };
}

function reparse(query: string): Node {
  const tree = parseSync(query) as { stmts: { stmt: Node }[] };
  const stmt = child(tree.stmts[0]?.stmt, "SelectStmt");
  if (tree.stmts.length !== 1 || stmt === undefined) unsupported("not a single SELECT");
  return stmt;
}

/** Volatile, set-returning and time- or session-dependent functions would leave kept rows stale. */
function refuseFunctions(facts: FunctionFacts): void {
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
}

function checkSetOperationTop(stmt: Node): void {
  if (list(stmt, "lockingClause").length > 0) unsupported("FOR UPDATE/SHARE");
  if (stmt["limitCount"] !== undefined || stmt["limitOffset"] !== undefined) unsupported("LIMIT/OFFSET");
}

/** What a set operation's branch may not carry. */
function checkSetOperationSide(side: Node): void {
  checkSetOperationTop(side);
  if (side["withClause"] !== undefined) unsupported("WITH (common table expression)");
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

/** Plan-time check: every generated statement is valid SQL against this database (run in a rolled-back tx). */
async function probe(sql: Sql | Tx, plan: QueryPlan): Promise<void> {
  const diff = plan.differential as DiffPlan;
  try {
    await inRolledBackTransaction(sql, async (tx) => {
      const deltas: Deltas = { tables: new Map() };
      for (const [i, source] of diff.sources.entries()) {
        deltas.tables.set(i, await createDeltaTable(tx, { name: `pgt_probe_delta_${source.relid}`, source }));
      }
      // Generated from the plan: the defining query's own clauses (SQL by design) and quoted catalog names.
      await tx.unsafe(`EXPLAIN SELECT * FROM (${plan.fullSelect}) s`);
      const queries = diff.setOperation
        ? setOperationChangeQueries(diff, deltas)
        : diff.blocks.flatMap((block) => strategyOf(block).changeQueries(block, diff, deltas));
      for (const q of queries) await tx.unsafe(`EXPLAIN ${q}`);
    });
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    unsupported(`query shape not recognised (generated SQL failed: ${message})`);
  }
}
