/** Names taken from requests: parsed strictly (identifiers, no reserved schema), then always passed to SQL quoted. */
import { isIdentifier, type QualifiedName } from "../db/identifiers.ts";
import { invalidName, reservedSchema } from "./errors.ts";

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
