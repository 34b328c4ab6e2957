/** The temporary tables a delta is read from: a source's columns plus its weight. */
import type { Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import type { SourceData } from "./diff_plan.ts";

/** Creates an empty delta table for `source` named `name` (unquoted), dropped at commit; returns its quoted name. */
export async function createDeltaTable(tx: Tx, input: { name: string; source: SourceData }): Promise<string> {
  const { name, source } = input;
  const quoted = `pg_temp.${quoteIdent(name)}`;
  // Generated from the plan: quoted catalog names only.
  await tx.unsafe(`DROP TABLE IF EXISTS ${quoted}`);
  await tx.unsafe(`CREATE TEMP TABLE ${quoteIdent(name)} ON COMMIT DROP AS
    SELECT ${source.columns.join(", ")}, 0::int8 AS "__pgt_w" FROM ${source.table} WITH NO DATA`);
  return quoted;
}

/**
 * The delta table a refresh fills: created once per session and source shape and emptied at every commit (`ON COMMIT
 * DELETE ROWS`), so a refresh in the steady state runs no DDL (a table created and dropped per refresh cost two
 * catalog writes each time; db/session.ts keeps these tables when it cleans the session after the user's SQL).
 * `shape` tags the source's columns and types: a source whose columns changed gets a new table, never one of the old
 * shape. The statement is sent at once; statements the caller sends after it (filling the table) run after it.
 */
export function sessionDeltaTable(tx: Tx, input: { source: SourceData; shape: string }): {
  name: string;
  created: Promise<unknown>;
} {
  const { source, shape } = input;
  const name = quoteIdent(`pgt_delta_${source.relid}_${shape}`);
  // Generated from the plan: quoted catalog names only; the shape tag is hexadecimal.
  const created = tx.unsafe(`CREATE TEMP TABLE IF NOT EXISTS ${name} ON COMMIT DELETE ROWS AS
    SELECT ${source.columns.join(", ")}, 0::int8 AS "__pgt_w" FROM ${source.table} WITH NO DATA`).execute();
  return { name: `pg_temp.${name}`, created };
}

/** A short tag of a source's shape (its columns and their types, as text): FNV-1a, 32 bits, hexadecimal. */
export function shapeTag(columns: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < columns.length; i++) h = Math.imul(h ^ columns.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16).padStart(8, "0");
}
