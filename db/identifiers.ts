/** Identifiers: what a plain one is, and quoting for generated SQL (request names are parsed in engine/names.ts). */

export interface QualifiedName {
  schema: string;
  name: string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$]*$/;

/** True when `s` is a plain identifier PostgreSQL accepts unchanged when quoted (at most 63 bytes). */
export function isIdentifier(s: string): boolean {
  return IDENTIFIER.test(s) && new TextEncoder().encode(s).length <= 63;
}

/** `schema.name` as shown to users (unquoted: both parts are plain identifiers). */
export function displayName(q: QualifiedName): string {
  return q.schema === "public" ? q.name : `${q.schema}.${q.name}`;
}

/** Double-quotes an identifier for generated DDL (names from the catalog, never raw request text). */
export function quoteIdent(s: string): string {
  return `"${s.replaceAll('"', '""')}"`;
}

/** Quotes `schema.name`. */
export function quoteQualified(q: QualifiedName): string {
  return `${quoteIdent(q.schema)}.${quoteIdent(q.name)}`;
}

/** Quotes a string literal for generated DDL (catalog text only). */
export function quoteLiteral(s: string): string {
  return `'${s.replaceAll("'", "''")}'`;
}
