/**
 * Flattening: a defining query with non-recursive WITH queries and simple subqueries in FROM is rewritten into an
 * equivalent query the block planner reads (one block per UNION ALL branch, table references only). Each step
 * edits the text at the scanner's tokens and the parser's locations, then the text is parsed again:
 *
 * - the first WITH query of a statement is substituted, as a subquery in FROM, at each reference and removed;
 * - a subquery in FROM that is a simple SELECT (flatten_merge.ts) is merged into the block around it;
 * - before a merge, the subquery's table names that are also used elsewhere in the query are renamed.
 *
 * What stays is refused by the block planner with the reason `subqueryInFromReason` gives (GROUP BY, DISTINCT...).
 */
import { parseSync } from "libpg-query";
import type { Sql, Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import { inRolledBackTransaction } from "../../rolled_back.ts";
import type { SourceRef } from "../../plan.ts";
import { Unsupported, unsupported } from "./diff_plan.ts";
import { mergeSubquery } from "./flatten_merge.ts";
import { child, funcName, list, names, type Node, QueryText, walk } from "./query_reading.ts";

/** A replacement of bytes [from, to) of the text; from === to inserts. */
export interface Edit {
  from: number;
  to: number;
  text: string;
}

/** The text with the edits applied; edits must not overlap (an insertion at a replacement's start goes before it). */
export function applyEdits(text: QueryText, edits: Edit[]): string {
  const sorted = [...edits].sort((a, b) => a.from - b.from || (a.to - a.from) - (b.to - b.from));
  let out = "";
  let pos = 0;
  for (const e of sorted) {
    if (e.from < pos) unsupported("query shape not recognised (overlapping rewrites of a subquery)");
    out += text.slice(pos, e.from) + e.text;
    pos = e.to;
  }
  return out + text.slice(pos, text.bytes.length);
}

/** Rewrites WITH queries and simple subqueries in FROM away; returns `query` itself when there is nothing to do. */
export async function flattenQuery(
  sql: Sql | Tx,
  args: { query: string; aggregates: Set<string>; sources: SourceRef[] },
): Promise<string> {
  let query = args.query;
  // Each step removes a WITH query or a subquery, or renames names that no later step renames again.
  for (let step = 0; step < 200; step++) {
    let next: string | null;
    try {
      const text = new QueryText(query);
      const root = parseRoot(query);
      next = inlineWith(text, root) ?? mergeNext(text, root, args);
    } catch (e) {
      // A rewrite the parser does not take is a shape not foreseen here: FULL, never a failed creation.
      if (e instanceof Unsupported) throw e;
      unsupported(`query shape not recognised (flattening: ${e instanceof Error ? e.message : String(e)})`);
    }
    if (next === null) {
      if (query !== args.query) await checkSameColumns(sql, args.query, query);
      return query;
    }
    query = next;
  }
  unsupported("query shape not recognised (too many subqueries to flatten)");
}

function parseRoot(query: string): Node {
  const tree = parseSync(query) as { stmts: { stmt: Node }[] };
  const root = tree.stmts[0]?.stmt;
  if (tree.stmts.length !== 1 || child(root, "SelectStmt") === undefined) unsupported("not a single SELECT");
  return root!;
}

/** The SELECT statements of a tree, outermost first, set operations' operands included. */
export function selects(root: unknown): Node[] {
  const out: Node[] = [];
  walk(root, (kind, node) => {
    if (kind === "SelectStmt") out.push(...withOperands(node));
  });
  return out;
}

/** A SELECT and, for a set operation, its operands (`larg`, `rarg`: not wrapped in a SelectStmt key). */
function withOperands(stmt: Node): Node[] {
  const larg = child(stmt, "larg");
  const rarg = child(stmt, "rarg");
  return [stmt, ...(larg === undefined ? [] : withOperands(larg)), ...(rarg === undefined ? [] : withOperands(rarg))];
}

// ---------------------------------------------------------------------------------------------------------------
// WITH

/**
 * Substitutes the first WITH query of the outermost statement that has one. MATERIALIZED is inlined too: it fences
 * the planner, not the result, and the class admits no volatile function whose result it would change.
 */
function inlineWith(text: QueryText, root: Node): string | null {
  const owner = selects(root).find((s) => s["withClause"] !== undefined);
  if (owner === undefined) return null;
  const withClause = child(owner, "withClause")!;
  if (withClause["recursive"] === true) unsupported("WITH RECURSIVE");
  const ctes = list(withClause, "ctes").map((c) => child(c, "CommonTableExpr")!);
  const cte = ctes[0]!;
  const name = String(cte["ctename"]);
  if (child(child(cte, "ctequery"), "SelectStmt") === undefined) unsupported("data-modifying statement in WITH");
  // name [(columns)] AS [NOT] [MATERIALIZED] (body)
  const first = text.tokenAt(Number(cte["location"]));
  let j = first + 1;
  if (text.tokens[j]?.text === "(") j = text.matchParen(j);
  if (!text.isKeyword(j, "as")) unsupported("query shape not recognised (WITH)");
  j++;
  if (text.isKeyword(j, "not")) j++;
  if (text.isKeyword(j, "materialized")) j++;
  if (text.tokens[j]?.text !== "(") unsupported("query shape not recognised (WITH)");
  const after = text.matchParen(j);
  const body = text.range(j + 1, after - 1);
  const edits: Edit[] = [];
  if (ctes.length > 1) {
    if (text.tokens[after]?.text !== ",") unsupported("query shape not recognised (WITH list)");
    edits.push({ from: text.tokens[first]!.start, to: text.tokens[after + 1]!.start, text: "" });
  } else {
    // A location of 0 is left out of libpg-query's JSON.
    const withKw = text.tokenAt(Number(withClause["location"] ?? 0));
    edits.push({ from: text.tokens[withKw]!.start, to: text.tokens[after]!.start, text: "" });
  }
  let shadowed = false;
  walk(owner, (kind, node) => {
    if (kind === "CommonTableExpr" && node !== cte && node["ctename"] === name) shadowed = true;
  });
  if (shadowed) unsupported(`WITH query "${name}" redefined in a nested WITH`);
  const bodyEnd = text.tokens[after - 1]!.end;
  const cteColumns = names(list(cte, "aliascolnames"));
  walk(owner, (kind, rv) => {
    if (kind !== "RangeVar" || rv["relname"] !== name || rv["schemaname"] !== undefined) return;
    if (Number(rv["location"]) < bodyEnd) return; // inside this WITH query's own body: another table
    const alias = child(rv, "alias");
    const refColumns = names(list(alias, "colnames"));
    const columns = [...refColumns, ...cteColumns.slice(refColumns.length)];
    const exposed = alias !== undefined ? String(alias["aliasname"]) : name;
    const start = text.tokenAt(Number(rv["location"]));
    edits.push({
      from: text.tokens[start]!.start,
      to: text.tokens[rangeVarEnd(text, rv) - 1]!.end,
      text: `(${body}) AS ${quoteIdent(exposed)}${
        columns.length > 0 ? ` (${columns.map(quoteIdent).join(", ")})` : ""
      }`,
    });
  });
  return applyEdits(text, edits);
}

/** Token index just after a RangeVar and its alias. */
export function rangeVarEnd(text: QueryText, rv: Node): number {
  let k = text.tokenAt(Number(rv["location"]));
  while (text.tokens[k + 1]?.text === ".") k += 2;
  k++;
  const alias = child(rv, "alias");
  if (alias !== undefined) {
    if (text.isKeyword(k, "as")) k++;
    k++;
    if (list(alias, "colnames").length > 0) k = text.matchParen(k);
  }
  return k;
}

// ---------------------------------------------------------------------------------------------------------------
// Subqueries in FROM

/** Why a subquery in FROM cannot be merged into the block around it, whatever its place; null when it can. */
export function subqueryInFromReason(range: Node, aggregates: Set<string>): string | null {
  if (range["lateral"] === true) return "LATERAL subquery in FROM";
  const s = child(child(range, "subquery"), "SelectStmt");
  if (s === undefined) return "subquery in FROM";
  const op = s["op"];
  if (op !== undefined && op !== "SETOP_NONE") {
    const name = { SETOP_UNION: "UNION", SETOP_INTERSECT: "INTERSECT", SETOP_EXCEPT: "EXCEPT" }[String(op)] ?? op;
    return `subquery in FROM with ${name}`;
  }
  if (s["withClause"] !== undefined) return "subquery in FROM with WITH";
  if (list(s, "valuesLists").length > 0) return "VALUES in FROM";
  if (list(s, "fromClause").length === 0) return "subquery in FROM without FROM";
  if (list(s, "groupClause").length > 0) return "subquery in FROM with GROUP BY";
  if (s["havingClause"] !== undefined) return "subquery in FROM with HAVING";
  if (s["distinctClause"] !== undefined) return "subquery in FROM with DISTINCT";
  if (s["limitCount"] !== undefined || s["limitOffset"] !== undefined) return "subquery in FROM with LIMIT/OFFSET";
  if (list(s, "lockingClause").length > 0) return "subquery in FROM with FOR UPDATE/SHARE";
  if (list(s, "windowClause").length > 0) return "subquery in FROM with a window function";
  let found: string | null = null;
  walk(list(s, "targetList"), (kind, node) => {
    if (kind === "SubLink") return false; // a scalar subquery's aggregate is its own
    if (kind !== "FuncCall") return;
    if (node["over"] !== undefined) found ??= "subquery in FROM with a window function";
    const f = funcName(node);
    if (aggregates.has(`${f.schema ?? ""}.${f.name}`)) found ??= "subquery in FROM with an aggregate";
  });
  return found;
}

/** The names FROM items expose (aliases or table names), joins looked through, in text order. */
export function exposedNames(fromItems: Node[]): string[] {
  const out: string[] = [];
  const visit = (item: Node) => {
    const rv = child(item, "RangeVar");
    const join = child(item, "JoinExpr");
    if (rv !== undefined) out.push(String(child(rv, "alias")?.["aliasname"] ?? rv["relname"]));
    else if (join !== undefined) {
      if (child(join, "alias") !== undefined) out.push(String(child(join, "alias")!["aliasname"]));
      visit(child(join, "larg")!);
      visit(child(join, "rarg")!);
    } else {
      const alias = Object.values(item).map((v) => child(v, "alias")).find((a) => a !== undefined);
      if (alias !== undefined) out.push(String(alias["aliasname"]));
    }
  };
  for (const item of fromItems) visit(item);
  return out;
}

/** Every name exposed by a FROM item anywhere in `node`. */
function allExposedNames(node: unknown, skip: Node | null): Set<string> {
  const out = new Set<string>();
  walk(node, (kind, n) => {
    if (n === skip) return false;
    if (kind !== "SelectStmt") return;
    for (const stmt of withOperands(n)) for (const name of exposedNames(list(stmt, "fromClause"))) out.add(name);
  });
  return out;
}

/** The first mergeable subquery in FROM, outermost first: merged, or its clashing names renamed first. */
function mergeNext(
  text: QueryText,
  root: Node,
  args: { aggregates: Set<string>; sources: SourceRef[] },
): string | null {
  for (const owner of selects(root)) {
    for (const { range, path } of subqueriesInFrom(list(owner, "fromClause"))) {
      if (subqueryInFromReason(range, args.aggregates) !== null) continue;
      const s = child(child(range, "subquery"), "SelectStmt")!;
      // Unqualified names could become ambiguous once both blocks' tables share one FROM.
      const qualify = [...qualifyEdits(text, s, null, args.sources), ...qualifyEdits(text, owner, range, args.sources)];
      if (qualify.length > 0) return applyEdits(text, qualify);
      // A name the subquery exposes that is used anywhere outside it would capture or be captured after the merge.
      const outside = allExposedNames(root, s);
      outside.add(String(child(range, "alias")?.["aliasname"] ?? ""));
      const clashes = exposedNames(list(s, "fromClause")).filter((n) => outside.has(n));
      if (clashes.length > 0) return renameInner(text, { root, s, clashes });
      return mergeSubquery(text, { owner, range, path, sources: args.sources });
    }
  }
  return null;
}

/** Where a subquery in FROM sits: the joins above it, outermost first, and its side in each. */
export interface JoinStep {
  join: Node;
  side: "larg" | "rarg";
}

function subqueriesInFrom(fromItems: Node[]): { range: Node; path: JoinStep[] }[] {
  const out: { range: Node; path: JoinStep[] }[] = [];
  const visit = (item: Node, path: JoinStep[]) => {
    const range = child(item, "RangeSubselect");
    const join = child(item, "JoinExpr");
    if (range !== undefined) out.push({ range, path });
    else if (join !== undefined) {
      visit(child(join, "larg")!, [...path, { join, side: "larg" }]);
      visit(child(join, "rarg")!, [...path, { join, side: "rarg" }]);
    }
  };
  for (const item of fromItems) visit(item, []);
  return out;
}

/**
 * Renames the subquery's table names in `clashes` (`lineitem` becomes `lineitem AS lineitem_1`) and its qualified
 * references to them. Refused when a query nested in the subquery exposes the same name (its references are its own).
 */
function renameInner(text: QueryText, args: { root: Node; s: Node; clashes: string[] }): string {
  const { root, s, clashes } = args;
  const taken = allExposedNames(root, null);
  const edits: Edit[] = [];
  for (const name of clashes) {
    let k = 1;
    while (taken.has(`${name}_${k}`)) k++;
    const fresh = `${name}_${k}`;
    taken.add(fresh);
    for (const nested of selects(s)) {
      if (exposedNames(list(nested, "fromClause")).includes(name)) {
        unsupported(`subquery in FROM whose name "${name}" is reused in a query nested in it`);
      }
    }
    const declared = declaringRangeVars(list(s, "fromClause")).filter((rv) =>
      String(child(rv, "alias")?.["aliasname"] ?? rv["relname"]) === name
    );
    if (declared.length !== 1) unsupported(`subquery in FROM: the name "${name}" could not be renamed`);
    const rv = declared[0]!;
    const alias = child(rv, "alias");
    const end = rangeVarEnd(text, rv);
    if (alias === undefined) {
      edits.push({ from: text.tokens[end - 1]!.end, to: text.tokens[end - 1]!.end, text: ` AS ${quoteIdent(fresh)}` });
    } else {
      let a = text.tokenAt(Number(rv["location"]));
      while (text.tokens[a + 1]?.text === ".") a += 2;
      a++;
      if (text.isKeyword(a, "as")) a++;
      edits.push({ from: text.tokens[a]!.start, to: text.tokens[a]!.end, text: quoteIdent(fresh) });
    }
    walk(s, (kind, ref) => {
      if (kind !== "ColumnRef") return;
      const fields = list(ref, "fields");
      const first = child(fields[0], "String")?.["sval"];
      if (fields.length > 2 && names(fields.slice(0, 2)).includes(name)) {
        unsupported(`subquery in FROM: qualified reference to "${name}" could not be renamed`);
      }
      if (fields.length !== 2 || first !== name) return;
      const t = text.tokens[text.tokenAt(Number(ref["location"]))]!;
      edits.push({ from: t.start, to: t.end, text: quoteIdent(fresh) });
    });
  }
  return applyEdits(text, edits);
}

/**
 * A block's unqualified column references (outside queries nested in it and outside `skip`) qualified by the one
 * table of its FROM that has such a column: the only reading PostgreSQL can have given them. ORDER BY names that
 * are output names are left alone (they name the output).
 */
function qualifyEdits(text: QueryText, block: Node, skip: Node | null, sources: SourceRef[]): Edit[] {
  const tables = declaringRangeVars(list(block, "fromClause")).map((rv) => ({
    exposed: String(child(rv, "alias")?.["aliasname"] ?? rv["relname"]),
    columns: columnsOf(rv, sources),
  }));
  const outputNames = new Set(list(block, "targetList").map((t) => child(t, "ResTarget")?.["name"]));
  const sortRefs = new Set<Node>();
  walk(list(block, "sortClause"), (kind, node) => {
    if (kind === "ColumnRef") sortRefs.add(node);
  });
  const edits: Edit[] = [];
  walk(block, (kind, ref) => {
    if (ref === skip || kind === "SelectStmt") return false;
    if (kind !== "ColumnRef") return;
    const fields = list(ref, "fields");
    const name = child(fields[0], "String")?.["sval"];
    if (fields.length !== 1 || typeof name !== "string") return;
    if (sortRefs.has(ref) && outputNames.has(name)) return;
    const owners = tables.filter((t) => t.columns?.includes(name));
    if (owners.length !== 1) return;
    const tok = text.tokens[text.tokenAt(Number(ref["location"]))]!;
    edits.push({ from: tok.start, to: tok.end, text: `${quoteIdent(owners[0]!.exposed)}.${quoteIdent(name)}` });
  });
  return edits;
}

/** A table reference's column names (column aliases applied), from the query's description; null if unknown. */
export function columnsOf(rv: Node, sources: SourceRef[]): string[] | null {
  const schema = rv["schemaname"];
  const found = sources.filter((s) => s.name === rv["relname"] && (schema === undefined || s.schema === schema));
  if (found.length !== 1) return null;
  const aliases = names(list(child(rv, "alias"), "colnames"));
  return found[0]!.columns.map((c, i) => aliases[i] ?? c.name);
}

/** The RangeVars of FROM items, joins looked through (not into subqueries). */
export function declaringRangeVars(fromItems: Node[]): Node[] {
  const out: Node[] = [];
  const visit = (item: Node) => {
    const rv = child(item, "RangeVar");
    const join = child(item, "JoinExpr");
    if (rv !== undefined) out.push(rv);
    else if (join !== undefined) {
      visit(child(join, "larg")!);
      visit(child(join, "rarg")!);
    }
  };
  for (const item of fromItems) visit(item);
  return out;
}

/**
 * The rewritten query must return what the user's does: the same column names and types (a reference the merge
 * made ambiguous fails here, with PostgreSQL's message). Both run as `LIMIT 0` in a rolled-back transaction.
 */
async function checkSameColumns(sql: Sql | Tx, original: string, flattened: string): Promise<void> {
  const shape = async (q: string) => {
    // The defining query's own text (SQL by design: the user's query, or its rewrite from its own tokens).
    const rows = await inRolledBackTransaction(sql, (tx) => tx.unsafe(`SELECT * FROM (${q}) q LIMIT 0`));
    return JSON.stringify(rows.columns.map((c) => [c.name, c.type]));
  };
  let before: string;
  let after: string;
  try {
    before = await shape(original);
    after = await shape(flattened);
  } catch (e) {
    unsupported(`subquery in FROM or WITH could not be merged (${e instanceof Error ? e.message : String(e)})`);
  }
  if (before !== after) unsupported("subquery in FROM or WITH could not be merged (its columns changed)");
}
