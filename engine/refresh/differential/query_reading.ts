/**
 * Reading a defining query: PostgreSQL's raw parse tree (libpg-query, as JSON) and the query's text cut at the
 * scanner's tokens (never regular expressions). Parser locations are byte offsets into the UTF-8 text.
 */
import { parseSync, scanSync } from "libpg-query";
import { unsupported } from "./diff_plan.ts";

// ---------------------------------------------------------------------------------------------------------------
// Parse trees

export type Node = Record<string, unknown>;

/** The node under `key`, if any. */
export function child(node: unknown, key: string): Node | undefined {
  return (node as Node | undefined)?.[key] as Node | undefined;
}

/** The list under `key`; [] when absent. */
export function list(node: unknown, key: string): Node[] {
  return ((node as Node | undefined)?.[key] as Node[] | undefined) ?? [];
}

/** Visits every node object in a tree (pre-order), with the key it hangs under. */
export function walk(node: unknown, visit: (kind: string, value: Node) => boolean | void): void {
  if (Array.isArray(node)) {
    for (const n of node) walk(n, visit);
    return;
  }
  if (node === null || typeof node !== "object") return;
  for (const [k, v] of Object.entries(node as Node)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v) && /^[A-Z]/.test(k)) {
      if (visit(k, v as Node) === false) continue;
    }
    walk(v, visit);
  }
}

/** A tree as JSON without locations, to compare expressions structurally. */
export function shape(node: unknown): string {
  return JSON.stringify(node, (k, v) => (k === "location" ? undefined : v));
}

/** The strings of a name list (`[{String: {sval}}]`). */
export function names(nodes: Node[]): string[] {
  return nodes.map((n) => String(child(n, "String")?.["sval"] ?? ""));
}

/** A function call's name and, when qualified, its schema. */
export function funcName(call: Node): { schema: string | null; name: string } {
  const parts = names(list(call, "funcname"));
  return parts.length > 1 ? { schema: parts[0]!, name: parts.at(-1)! } : { schema: null, name: parts[0] ?? "" };
}

// ---------------------------------------------------------------------------------------------------------------
// Query text, cut at the scanner's tokens

/** Keywords that end a FROM, WHERE, GROUP BY or HAVING clause. */
export const CLAUSE_END = new Set([
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

export interface Token {
  start: number;
  end: number;
  text: string;
  keyword: boolean;
}

/** The query as UTF-8 bytes (parser locations are byte offsets) and its tokens. */
export class QueryText {
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
export function expandTableCommands(query: string): string {
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
