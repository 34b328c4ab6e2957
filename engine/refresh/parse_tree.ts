/** Reading libpg-query parse trees (PostgreSQL's raw parse tree as JSON). */

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
