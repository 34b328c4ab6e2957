/**
 * Merging one simple subquery in FROM (no aggregate, GROUP BY, DISTINCT, window, LIMIT, set operation: see
 * flatten.ts) into the block around it: its FROM items take its place, its WHERE is ANDed into the block's WHERE
 * (or into the ON of the join whose nullable side it is), and each reference to one of its columns becomes the
 * column's expression, parenthesised. The subquery's names were made unique beforehand (flatten.ts).
 */
import { quoteIdent } from "../../../db/identifiers.ts";
import { unsupported } from "./diff_plan.ts";
import type { SourceRef } from "../../plan.ts";
import { applyEdits, columnsOf, declaringRangeVars, type Edit, exposedNames, type JoinStep } from "./flatten.ts";
import { child, CLAUSE_END, list, names, type Node, type QueryText, walk } from "./query_reading.ts";

/** A column the subquery outputs: its name (null when PostgreSQL would invent one) and its expression. */
interface Output {
  name: string | null;
  expr: string;
}

/** Keywords that end a join's ON condition (besides CLAUSE_END, a comma and a closing parenthesis). */
const JOIN_WORDS = new Set(["join", "inner", "left", "right", "full", "cross", "natural", "on", "using"]);

/** The query text with the subquery `range` merged into `owner`. */
export function mergeSubquery(
  text: QueryText,
  args: { owner: Node; range: Node; path: JoinStep[]; sources: SourceRef[] },
): string {
  const { owner, range, path } = args;
  const s = child(child(range, "subquery"), "SelectStmt")!;
  const alias = child(range, "alias");
  if (alias === undefined) unsupported("subquery in FROM without an alias");
  const exposed = String(alias["aliasname"]);
  if (path.some((p) => p.join["isNatural"] === true || list(p.join, "usingClause").length > 0)) {
    unsupported("subquery in FROM joined with USING or NATURAL");
  }

  // (SELECT targets FROM items [WHERE cond] [ORDER BY ...]) [AS] alias [(columns)]
  const targetList = list(s, "targetList");
  const firstTarget = text.tokenAt(Number(child(targetList[0], "ResTarget")!["location"]));
  let open = firstTarget - 1;
  if (text.isKeyword(open, "all")) open--;
  if (!text.isKeyword(open, "select") || text.tokens[open - 1]?.text !== "(") {
    unsupported("query shape not recognised (subquery in FROM)");
  }
  open--;
  const close = text.matchParen(open);
  let end = close;
  if (text.isKeyword(end, "as")) end++;
  end++;
  if (list(alias, "colnames").length > 0) end = text.matchParen(end);

  const fromKw = text.clauseEnd(firstTarget, new Set(["from"]));
  const fromEnd = text.clauseEnd(fromKw + 1, CLAUSE_END);
  let where: string | null = null;
  if (s["whereClause"] !== undefined) {
    if (!text.isKeyword(fromEnd, "where")) unsupported("query shape not recognised (subquery's WHERE)");
    where = text.range(fromEnd + 1, text.clauseEnd(fromEnd + 1, CLAUSE_END));
  }
  const outputs = subqueryOutputs(text, { s, alias, firstTarget, fromKw, sources: args.sources });

  const edits: Edit[] = [];
  // FROM items: spliced into a comma list, or as one join operand (commas become CROSS JOIN) inside a join.
  const items = list(s, "fromClause");
  const itemTexts = text.splitCommas(fromKw + 1, fromEnd).map(([a, b], i) =>
    path.length > 0 && child(items[i], "JoinExpr") !== undefined ? `(${text.range(a, b)})` : text.range(a, b)
  );
  const spliced = path.length === 0
    ? itemTexts.join(", ")
    : itemTexts.length === 1
    ? itemTexts[0]!
    : `(${itemTexts.join(" CROSS JOIN ")})`;
  edits.push({ from: text.tokens[open]!.start, to: text.tokens[end - 1]!.end, text: spliced });
  if (where !== null) edits.push(...placeWhere(text, { owner, path, where, after: end }));
  edits.push(...referenceEdits(text, { owner, range, exposed, outputs }));
  return applyEdits(text, edits);
}

/** The subquery's output columns: names (column aliases applied) and expressions (`AS name` removed). */
function subqueryOutputs(
  text: QueryText,
  args: { s: Node; alias: Node; firstTarget: number; fromKw: number; sources: SourceRef[] },
): Output[] {
  const targetList = list(args.s, "targetList");
  const items = text.splitCommas(args.firstTarget, args.fromKw);
  if (items.length !== targetList.length) unsupported("query shape not recognised (subquery's select list)");
  const aliases = names(list(args.alias, "colnames"));
  const outputs = items.flatMap(([a, b], i): Output[] => {
    const rt = child(targetList[i], "ResTarget")!;
    const val = child(rt, "val");
    const ref = child(val, "ColumnRef");
    if (ref !== undefined && child(list(ref, "fields").at(-1), "A_Star") !== undefined) {
      return starOutputs(args.s, names(list(ref, "fields").slice(0, -1)), args.sources);
    }
    let end = b;
    if (rt["name"] !== undefined) {
      end = b - 1;
      if (text.isKeyword(end - 1, "as")) end--;
    }
    const expr = text.range(a, end);
    const simple = ref !== undefined || child(val, "A_Const") !== undefined;
    const fields = names(list(ref, "fields"));
    const call = child(val, "FuncCall");
    const figured = rt["name"] !== undefined
      ? String(rt["name"])
      : ref !== undefined
      ? fields.at(-1)!
      : call !== undefined
      ? names(list(call, "funcname")).at(-1)!
      : null;
    return [{ name: figured, expr: simple ? expr : `(${expr})` }];
  });
  return outputs.map((o, i) => ({ name: aliases[i] ?? o.name, expr: o.expr }));
}

/**
 * `*` or `x.*` in the subquery's select list: the columns of its tables, from the query's description. Refused where
 * they are not known (another subquery, a function) or a USING/NATURAL join merges columns.
 */
function starOutputs(s: Node, qualifier: string[], sources: SourceRef[]): Output[] {
  if (qualifier.length > 1) unsupported("subquery in FROM with * in its select list");
  let merged = false;
  walk(list(s, "fromClause"), (kind, node) => {
    if (kind === "JoinExpr" && (node["isNatural"] === true || list(node, "usingClause").length > 0)) merged = true;
  });
  const rangeVars = declaringRangeVars(list(s, "fromClause"));
  const items = list(s, "fromClause");
  const onlyTables = exposedNames(items).length === rangeVars.length;
  if (qualifier.length === 0 && (merged || !onlyTables)) unsupported("subquery in FROM with * in its select list");
  const out: Output[] = [];
  for (const rv of rangeVars) {
    const exposed = String(child(rv, "alias")?.["aliasname"] ?? rv["relname"]);
    if (qualifier.length === 1 && qualifier[0] !== exposed) continue;
    const columns = columnsOf(rv, sources);
    if (columns === null) unsupported("subquery in FROM with * in its select list");
    out.push(...columns.map((c) => ({ name: c, expr: `${quoteIdent(exposed)}.${quoteIdent(c)}` })));
  }
  if (out.length === 0) unsupported("subquery in FROM with * in its select list");
  return out;
}

/**
 * Where the subquery's WHERE goes: the block's WHERE when only inner joins lie above it; the ON of the join above
 * it when it is that join's right operand (an inner join, or the nullable side of a LEFT JOIN); else refused.
 */
function placeWhere(text: QueryText, args: { owner: Node; path: JoinStep[]; where: string; after: number }): Edit[] {
  const { owner, path, where, after } = args;
  if (path.every((p) => p.join["jointype"] === "JOIN_INNER")) return andIntoWhere(text, owner, where);
  const last = path.at(-1)!;
  const jt = String(last.join["jointype"]);
  if (last.side === "rarg" && (jt === "JOIN_INNER" || jt === "JOIN_LEFT") && text.isKeyword(after, "on")) {
    const start = after + 1;
    let depth = 0;
    let j = start;
    for (; j < text.tokens.length; j++) {
      const t = text.tokens[j]!;
      const word = t.text.toLowerCase();
      if (t.text === "(" || t.text === "[") depth++;
      else if (t.text === ")" || t.text === "]") {
        if (depth === 0) break;
        depth--;
      } else if (depth === 0 && (t.text === "," || t.text === ";")) break;
      else if (depth === 0 && t.keyword && (CLAUSE_END.has(word) || JOIN_WORDS.has(word))) {
        // left(...) and right(...) are functions.
        if ((word === "left" || word === "right") && text.tokens[j + 1]?.text === "(") continue;
        break;
      }
    }
    return [
      { from: text.tokens[start]!.start, to: text.tokens[start]!.start, text: "(" },
      { from: text.tokens[j - 1]!.end, to: text.tokens[j - 1]!.end, text: `) AND (${where})` },
    ];
  }
  const side = last.side === "rarg" ? "right" : "left";
  unsupported(`subquery in FROM with WHERE as the ${side} operand of a ${jt.replace("JOIN_", "")} JOIN`);
}

function andIntoWhere(text: QueryText, owner: Node, where: string): Edit[] {
  const targets = list(owner, "targetList");
  if (targets.length === 0) unsupported("a SELECT without a select list");
  const first = text.tokenAt(Number(child(targets[0], "ResTarget")!["location"]));
  const fromKw = text.clauseEnd(first, new Set(["from"]));
  const fromEnd = text.clauseEnd(fromKw + 1, CLAUSE_END);
  if (owner["whereClause"] === undefined) {
    const at = text.tokens[fromEnd - 1]!.end;
    return [{ from: at, to: at, text: ` WHERE ${where}` }];
  }
  if (!text.isKeyword(fromEnd, "where")) unsupported("query shape not recognised (WHERE)");
  const whereEnd = text.clauseEnd(fromEnd + 1, CLAUSE_END);
  const at = text.tokens[fromEnd + 1]!.start;
  const to = text.tokens[whereEnd - 1]!.end;
  return [{ from: at, to: at, text: "(" }, { from: to, to, text: `) AND (${where})` }];
}

/**
 * Each reference to the subquery's columns in the block (`alias.col`, unqualified `col`, `alias.*`, `*`) becomes
 * the expression. In a query nested in the block a reference is rewritten only where it cannot mean anything else.
 */
function referenceEdits(
  text: QueryText,
  args: { owner: Node; range: Node; exposed: string; outputs: Output[] },
): Edit[] {
  const { owner, range, exposed, outputs } = args;
  const byName = new Map<string, Output>();
  for (const o of outputs) if (o.name !== null && !byName.has(o.name)) byName.set(o.name, o);
  const targets = list(owner, "targetList").map((t) => child(t, "ResTarget")!);
  // ORDER BY's bare names are output names first (PostgreSQL's rule); those stay as they are.
  const outputNames = new Set(targets.map((rt) => rt["name"]).filter((n) => n !== undefined));
  const sortRefs = new Set<Node>();
  walk(list(owner, "sortClause"), (kind, node) => {
    if (kind === "ColumnRef") sortRefs.add(node);
  });
  const onlyItem = list(owner, "fromClause").length === 1 && child(list(owner, "fromClause")[0], "RangeSubselect");

  const edits: Edit[] = [];
  const visit = (node: unknown, nested: Node[]) => {
    walk(node, (kind, n) => {
      // Another subquery in FROM cannot see this one (LATERAL is refused).
      if (n === range || kind === "RangeSubselect") return false;
      if (kind === "SelectStmt") {
        visit(n, [...nested, n]);
        return false;
      }
      if (kind !== "ColumnRef") return;
      const fields = list(n, "fields");
      const star = child(fields.at(-1), "A_Star") !== undefined;
      const parts = names(star ? fields.slice(0, -1) : fields);
      const first = text.tokenAt(Number(n["location"]));
      const span = { from: text.tokens[first]!.start, to: text.tokens[first + 2 * (fields.length - 1)]!.end };
      if (star) {
        if (!(parts.length === 1 && parts[0] === exposed) && !(parts.length === 0 && onlyItem)) {
          if (parts.length === 0) unsupported("SELECT * over a subquery in FROM and other tables");
          return;
        }
        if (nested.length > 0 || !isTargetVal(targets, n)) {
          unsupported("subquery in FROM referenced by * outside the select list");
        }
        const expanded = outputs.map((o) => o.name === null ? o.expr : `${o.expr} AS ${quoteIdent(o.name)}`);
        edits.push({ ...span, text: expanded.join(", ") });
        return;
      }
      let output: Output | undefined;
      if (parts.length === 2 && parts[0] === exposed) {
        if (nested.some((q) => exposedNames(list(q, "fromClause")).includes(exposed))) return;
        output = byName.get(parts[1]!);
        if (output === undefined) unsupported(`query shape not recognised (column "${parts[1]}" of the subquery)`);
      } else if (parts.length === 1 && byName.has(parts[0]!)) {
        if (sortRefs.has(n) && outputNames.has(parts[0]!)) return;
        if (nested.length > 0) {
          unsupported(`subquery in FROM whose column "${parts[0]}" is referenced unqualified in a nested query`);
        }
        output = byName.get(parts[0]!);
      } else return;
      const named = nested.length === 0 && isTargetVal(targets.filter((rt) => rt["name"] === undefined), n);
      edits.push({ ...span, text: named ? `${output!.expr} AS ${quoteIdent(parts.at(-1)!)}` : output!.expr });
    });
  };
  visit(owner, []);
  return edits;
}

/** Whether `ref` is the whole value of one of the select-list items. */
function isTargetVal(targets: Node[], ref: Node): boolean {
  return targets.some((rt) => child(child(rt, "val"), "ColumnRef") === ref);
}
