/** Names from requests: validated here, then always passed to SQL quoted. */
import { invalidName, reservedSchema } from "../engine/errors.ts";

export interface QualifiedName {
  schema: string;
  name: string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_$]*$/;

/** True when `s` is a plain identifier PostgreSQL accepts unchanged when quoted (at most 63 bytes). */
export function isIdentifier(s: string): boolean {
  return IDENTIFIER.test(s) && new TextEncoder().encode(s).length <= 63;
}

/** The service's own schemas and PostgreSQL's; a request may name nothing in them. */
const RESERVED_SCHEMAS = new Set(["pgtrickle", "pgtrickle_changes", "pg_catalog", "information_schema", "pg_toast"]);

/**
 * True for a schema no request may name: trickle's catalog and change buffers, and the system's (PostgreSQL reserves
 * every schema name starting with "pg_", the temporary ones included, e.g. pg_temp_3 and pg_toast_temp_3).
 */
export function isReservedSchema(schema: string): boolean {
  return RESERVED_SCHEMAS.has(schema) || schema.startsWith("pg_");
}

/**
 * Parses `schema.table` or `table` (schema `public`); throws InvalidName when it is not an identifier or names a
 * reserved schema. Names are case-sensitive.
 */
export function parseQualifiedName(input: string, what = "stream table name"): QualifiedName {
  const parts = input.split(".");
  if (parts.length > 2 || !parts.every(isIdentifier)) throw invalidName(input, what);
  const q = parts.length === 2 ? { schema: parts[0]!, name: parts[1]! } : { schema: "public", name: parts[0]! };
  if (isReservedSchema(q.schema)) throw reservedSchema(input, { what, schema: q.schema });
  return q;
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
