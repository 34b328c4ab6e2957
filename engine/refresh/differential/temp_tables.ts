/** The temporary tables a delta is read from: a source's columns plus its weight, dropped at commit. */
import type { Tx } from "../../../db/pool.ts";
import { quoteIdent } from "../../../db/identifiers.ts";
import type { SourceData } from "./diff_plan.ts";

/** Creates an empty delta table for `source` named `name` (unquoted); returns its quoted pg_temp name. */
export async function createDeltaTable(tx: Tx, input: { name: string; source: SourceData }): Promise<string> {
  const { name, source } = input;
  const quoted = `pg_temp.${quoteIdent(name)}`;
  // Generated from the plan: quoted catalog names only.
  await tx.unsafe(`DROP TABLE IF EXISTS ${quoted}`);
  await tx.unsafe(`CREATE TEMP TABLE ${quoteIdent(name)} ON COMMIT DROP AS
    SELECT ${source.columns.join(", ")}, 0::int8 AS "__pgt_w" FROM ${source.table} WITH NO DATA`);
  return quoted;
}
